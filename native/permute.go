package native

import "github.com/fp4moe/fp4moe/moe"

// Permutation is the result of the Permute stage: the rows of the (t, k) pairs that have a
// local expert, grouped by local expert in a contiguous layout whose segments are padded to a
// multiple of BlockM rows.
type Permutation struct {
	// BlockM is the row alignment of the segments.
	BlockM int
	// M tokens with TopK slots each.
	M, TopK int
	// Counts (E) holds the number of real rows of each local expert.
	Counts []int
	// Offsets (E+1) holds the first row of each expert's segment; Offsets[E] is M_sum, the total
	// number of rows, padding included. Segment e spans [Offsets[e], Offsets[e+1]) and its real
	// rows are the first Counts[e] of them.
	Offsets []int
	// ExpertIDs (M_sum) holds the local expert of every real row, and -1 for padding rows.
	ExpertIDs []int32
	// Pairs (M_sum) holds t·TopK + k for the real row of (t, k), and -1 for padding rows.
	Pairs []int32
	// InvPerm (M, TopK) holds the row of (t, k), or -1 when the pair has no local expert.
	InvPerm []int32

	cursor []int // next free row of each segment, while permuting
}

// MSum returns the number of rows of the permuted layout, padding included.
func (p *Permutation) MSum() int { return p.Offsets[len(p.Offsets)-1] }

// Permute computes the permutation of a batch: for every (t, k) whose local expert
// e = cfg.LocalExpert(ids[t·topk+k]) is >= 0, one row in the segment of e. Rows inside a
// segment are in ascending (t, k) order, so the layout is reproducible; a token that picks the
// same expert twice gets two rows. ids must have passed moe.Batch validation, e is the number
// of local experts and blockM >= 1. The slices of p are reused when large enough.
func (p *Permutation) Permute(ids []int32, m, topk int, cfg *moe.Config, e, blockM int) {
	p.BlockM, p.M, p.TopK = blockM, m, topk
	p.Counts = resize(p.Counts, e)
	p.Offsets = resize(p.Offsets, e+1)
	p.InvPerm = resize(p.InvPerm, m*topk)
	clear(p.Counts)
	for i, id := range ids[:m*topk] {
		if le := cfg.LocalExpert(id); le >= 0 {
			p.Counts[le]++
		} else {
			p.InvPerm[i] = -1
		}
	}
	off := 0
	for le, c := range p.Counts {
		p.Offsets[le] = off
		off += (c + blockM - 1) / blockM * blockM
	}
	p.Offsets[e] = off
	p.ExpertIDs = resize(p.ExpertIDs, off)
	p.Pairs = resize(p.Pairs, off)
	for i := range p.ExpertIDs {
		p.ExpertIDs[i], p.Pairs[i] = -1, -1
	}
	p.cursor = resize(p.cursor, e)
	copy(p.cursor, p.Offsets[:e])
	for i, id := range ids[:m*topk] {
		le := cfg.LocalExpert(id)
		if le < 0 {
			continue
		}
		r := p.cursor[le]
		p.cursor[le]++
		p.ExpertIDs[r] = int32(le)
		p.Pairs[r] = int32(i)
		p.InvPerm[i] = int32(r)
	}
}

// resize returns s with length n, reusing its memory when the capacity allows.
func resize[T any](s []T, n int) []T {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]T, n, n+n/4)
}
