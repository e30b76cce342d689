//go:build cudaops

package cudaops

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"gorgonia.org/cu"
)

// FatbinEnv names the environment variable that loads the kernels from a fatbin file instead
// of the embedded one (to build and test kernels in one step on a GPU machine).
const FatbinEnv = "FP4MOE_FATBIN"

//go:embed kernels/moe.fatbin
var embeddedFatbin []byte

// Device is the opened GPU: device 0, its primary context, and the kernels' module.
type Device struct {
	Name         string
	Major, Minor int
	SMs          int
	// MemBandwidth is the memory's peak bandwidth in bytes per second, from the memory clock
	// and bus width the driver reports (2 transfers a clock); SMClock the SMs' clock in Hz.
	// Their ratio per SM picks between kernels that trade instructions for memory parallelism.
	MemBandwidth, SMClock float64
	// Fatbin says where the kernels came from: "embedded" or the path in FP4MOE_FATBIN.
	Fatbin string

	dev   cu.Device
	ctx   cu.CUContext
	mod   cu.Module
	fn    kernels
	names map[cu.Function]string // the kernels' names (Layer.Plan)
}

// kernels are the module's functions.
type kernels struct {
	prepare, route, routeCount, routeSmall, routeScatter, permute, permuteScales, gemm, gemmDec, gemmWg4, gemmWg4s, gemmWg4m, gemmWgp, wgTiles, wgStage, foldRef, reencode, actQuant, reduce, gemmDec1, gemmDec16s, gemmDec16w, gemmDec32, gemmDec32s, gemmDec1w, gemmDecW, gemmDec1wh cu.Function
}

// BytesPerSMCycle is the peak memory bandwidth per SM and SM clock cycle: what an SM must
// consume to keep the memory busy (about 12.8 on an H100 SXM, 18.8 on an H200); 0 where the
// driver does not report the clocks.
func (d *Device) BytesPerSMCycle() float64 {
	if d.SMs == 0 || d.SMClock == 0 {
		return 0
	}
	return d.MemBandwidth / (float64(d.SMs) * d.SMClock)
}

var open = sync.OnceValues(func() (*Device, error) {
	if !handlesFit() {
		return nil, errors.New("cudaops: gorgonia.org/cu's handle types changed size; the launcher cannot read them")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	if n < 1 {
		return nil, fmt.Errorf("%w: no CUDA device", ErrNoCUDA)
	}
	d := &Device{Fatbin: "embedded"}
	if d.dev, err = cu.GetDevice(0); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	if d.Name, err = d.dev.Name(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	if d.Major, d.Minor, err = d.dev.ComputeCapability(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	if d.SMs, err = d.dev.Attribute(cu.MultiprocessorCount); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	// Peak memory bandwidth and SM clock (0 where the driver does not say).
	mclk, _ := d.dev.Attribute(cu.MemoryClockRate) // kHz
	bus, _ := d.dev.Attribute(cu.GlobalMemoryBusWidth)
	sclk, _ := d.dev.Attribute(cu.ClockRate) // kHz
	d.MemBandwidth, d.SMClock = 2*float64(mclk)*1e3*float64(bus)/8, float64(sclk)*1e3
	if d.Major != 9 {
		return nil, fmt.Errorf("%w: %s has compute capability %d.%d; the kernels are built for Hopper (9.0)", ErrNoCUDA, d.Name, d.Major, d.Minor)
	}
	if d.ctx, err = d.dev.RetainPrimaryCtx(); err != nil {
		return nil, fmt.Errorf("%w: primary context: %v", ErrNoCUDA, err)
	}
	if err := cu.SetCurrentContext(d.ctx); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCUDA, err)
	}
	image := embeddedFatbin
	if p := os.Getenv(FatbinEnv); p != "" {
		if image, err = os.ReadFile(p); err != nil {
			return nil, fmt.Errorf("cudaops: %s: %w", FatbinEnv, err)
		}
		d.Fatbin = p
	}
	if d.mod, err = cu.LoadData(string(image)); err != nil {
		return nil, fmt.Errorf("cudaops: loading the kernels (%s): %v", d.Fatbin, err)
	}
	if err := checkLayout(d.mod, d.Fatbin); err != nil {
		return nil, err
	}
	d.names = map[cu.Function]string{}
	for name, f := range map[string]*cu.Function{
		"moe_prepare": &d.fn.prepare, "moe_route": &d.fn.route, "moe_route_count": &d.fn.routeCount, "moe_route_small": &d.fn.routeSmall, "moe_route_scatter": &d.fn.routeScatter, "moe_permute": &d.fn.permute, "moe_permute_scales": &d.fn.permuteScales,
		"moe_gemm": &d.fn.gemm, "moe_gemm_dec": &d.fn.gemmDec, "moe_gemm_wg4": &d.fn.gemmWg4, "moe_gemm_wg4s": &d.fn.gemmWg4s, "moe_gemm_wg4m": &d.fn.gemmWg4m, "moe_gemm_wgp": &d.fn.gemmWgp, "moe_wg_tiles": &d.fn.wgTiles, "moe_wg_stage": &d.fn.wgStage, "moe_fold_ref": &d.fn.foldRef, "moe_reencode": &d.fn.reencode,
		"moe_act_quant": &d.fn.actQuant, "moe_reduce": &d.fn.reduce, "moe_gemm_dec1": &d.fn.gemmDec1, "moe_gemm_dec16s": &d.fn.gemmDec16s, "moe_gemm_dec16w": &d.fn.gemmDec16w, "moe_gemm_dec32": &d.fn.gemmDec32, "moe_gemm_dec32s": &d.fn.gemmDec32s, "moe_gemm_dec1w": &d.fn.gemmDec1w, "moe_gemm_decw": &d.fn.gemmDecW,
		"moe_gemm_dec1wh": &d.fn.gemmDec1wh,
	} {
		if *f, err = d.mod.Function(name); err != nil {
			return nil, fmt.Errorf("cudaops: kernel %s: %v", name, err)
		}
		d.names[*f] = name
	}
	// The streaming GEMM's kernels (split, and split 1): their shared memory a block, and the
	// largest carveout, so that four blocks or more are resident on a multiprocessor.
	for f, smem := range map[cu.Function]int{d.fn.gemmDec: decSmem, d.fn.gemmDec1: dec1Smem, d.fn.gemmDec16s: dec16Smem, d.fn.gemmDec16w: dec16wSmem, d.fn.gemmDec32: dec32Smem, d.fn.gemmDec32s: dec32Smem, d.fn.gemmDec1w: dec1wSmem, d.fn.gemmDecW: decwSmem, d.fn.gemmDec1wh: dec1wSmem} {
		if err := setMaxDynamicSmem(f, smem); err != nil {
			return nil, err
		}
		if err := preferShared(f); err != nil {
			return nil, err
		}
	}
	// The wgmma GEMMs' rings take more than the default 48 KB of shared memory.
	if err := setMaxDynamicSmem(d.fn.gemmWg4, wg4Smem); err != nil {
		return nil, err
	}
	if err := setMaxDynamicSmem(d.fn.gemmWgp, wgfPSmem); err != nil {
		return nil, err
	}
	if err := setMaxDynamicSmem(d.fn.gemmWg4m, wg4mSmem); err != nil {
		return nil, err
	}
	// The small-tile folding kernel: wg4sBlocks blocks an SM, so the largest carveout.
	if err := setMaxDynamicSmem(d.fn.gemmWg4s, wg4sSmem); err != nil {
		return nil, err
	}
	if err := preferShared(d.fn.gemmWg4s); err != nil {
		return nil, err
	}
	return d, nil
})

// Open opens device 0 once: its primary context and the kernels. Without a usable Hopper GPU it
// returns an error wrapping ErrNoCUDA.
func Open() (*Device, error) { return open() }

// bind locks the calling goroutine to its OS thread and makes the device's context current
// there; the returned function undoes the lock. Every method that calls the driver starts with
// it, because contexts are current per OS thread and Gorgonia runs ops on unlocked goroutines.
func (d *Device) bind() (func(), error) {
	runtime.LockOSThread()
	if err := cu.SetCurrentContext(d.ctx); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("cudaops: making the context current: %v", err)
	}
	return runtime.UnlockOSThread, nil
}

// openBound opens the device (Open) and binds it to the calling goroutine (bind); the returned
// function undoes the bind.
func openBound() (*Device, func(), error) {
	d, err := Open()
	if err != nil {
		return nil, nil, err
	}
	unbind, err := d.bind()
	if err != nil {
		return nil, nil, err
	}
	return d, unbind, nil
}
