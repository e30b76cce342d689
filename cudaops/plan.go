package cudaops

import "fmt"

// GEMMPlan is how one grouped GEMM of a forward runs (Layer.Plan): its kernel, its split (the
// streaming kernels' warps sharing each weight row, 1 for the other kernels), its grid's blocks
// (for the batch's tile bound, so that some of them may find no tile and return at once), the
// blocks a multiprocessor holds at once (the driver's occupancy for the kernel's registers and
// shared memory), and the waves those make on the device's multiprocessors.
type GEMMPlan struct {
	Kernel      string
	Split       int
	Blocks      int
	BlocksPerSM int
	Waves       float64
}

// String writes the plan as "moe_gemm_dec S=2: 1472 blocks, 4 an SM, 2.79 waves".
func (p GEMMPlan) String() string {
	return fmt.Sprintf("%s S=%d: %d blocks, %d an SM, %.2f waves", p.Kernel, p.Split, p.Blocks, p.BlocksPerSM, p.Waves)
}

// planOf fills a plan's waves: blocks over perSM · sms (0 when either is 0).
func planOf(kernel string, split, blocks, perSM, sms int) GEMMPlan {
	p := GEMMPlan{Kernel: kernel, Split: split, Blocks: blocks, BlocksPerSM: perSM}
	if perSM > 0 && sms > 0 {
		p.Waves = float64(blocks) / float64(perSM*sms)
	}
	return p
}
