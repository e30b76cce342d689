package cudaops

import "testing"

func TestBlockedScales(t *testing.T) {
	const e, n, kd = 2, 32, 256 // two 16-row blocks, 8 scale bytes a row, 2 groups
	s := make([]uint8, e*n*kd/32)
	for i := range s {
		s[i] = uint8(i)
	}
	got := blockedScales(s, e, n, kd)
	// Byte j of group q of row r of expert x is row-major byte (x·32 + r)·8 + 4q + j; it lands
	// in 16-row block x·2 + r/16, group q, row r%16: ((((x·2 + r/16)·2 + q)·16 + r%16)·4 + j.
	cases := []struct{ at, want int }{
		{0, 0}, {3, 3}, // expert 0, row 0, group 0
		{4, 8},                                 // row 1, group 0
		{64, 4},                                // row 0, group 1
		{68, 12},                               // row 1, group 1
		{128, 128},                             // row 16, group 0
		{192 + 60, 8*(31) + 4},                 // row 31, group 1
		{256, 256},                             // expert 1, row 0, group 0
		{256 + 64 + 4*5 + 2, (32+5)*8 + 4 + 2}, // expert 1, row 5, group 1, byte 2
	}
	for _, c := range cases {
		if int(got[c.at]) != c.want%256 {
			t.Errorf("byte %d = %d, want %d", c.at, got[c.at], c.want%256)
		}
	}
	// A permutation: every byte of s appears once (s holds each value i mod 256 a fixed number of times).
	count := map[uint8]int{}
	for _, v := range s {
		count[v]++
	}
	for _, v := range got {
		count[v]--
	}
	for v, c := range count {
		if c != 0 {
			t.Fatalf("value %d: %d more in the input than in the output", v, c)
		}
	}
}

func TestBlockedWeights(t *testing.T) {
	// Two 16-row blocks of 256 columns (128 bytes a row, two groups).
	const n, kd = 32, 256
	src := make([]uint8, n*kd/2)
	for r := 0; r < n; r++ {
		for b := 0; b < kd/2; b++ {
			src[r*kd/2+b] = uint8(r<<2 | b/64<<1 | b%2) // row, group and byte parity
		}
	}
	dst := make([]uint8, len(src))
	blockedWeights(dst, src, n, kd)
	// Row r's group q lands in block r/16 at ((r/16·2 + q)·16 + r%16)·64.
	cases := []struct{ at, row, grp, b int }{
		{0, 0, 0, 0}, {63, 0, 0, 63}, // row 0, group 0
		{64, 1, 0, 0},       // row 1, group 0
		{15 * 64, 15, 0, 0}, // row 15, group 0
		{1024, 0, 1, 0},     // row 0, group 1
		{1024 + 64 + 5, 1, 1, 5},
		{2048, 16, 0, 0},                 // row 16, group 0
		{3*1024 + 15*64 + 63, 31, 1, 63}, // the last byte: row 31, group 1
	}
	for _, c := range cases {
		if want := src[c.row*kd/2+64*c.grp+c.b]; dst[c.at] != want {
			t.Errorf("byte %d = %#x, want row %d group %d byte %d (%#x)", c.at, dst[c.at], c.row, c.grp, c.b, want)
		}
	}
	// Every 64-byte piece of src appears once in dst.
	seen := map[string]int{}
	for i := 0; i < len(src); i += 64 {
		seen[string(src[i:i+64])]++
	}
	for i := 0; i < len(dst); i += 64 {
		seen[string(dst[i:i+64])]--
	}
	for k, c := range seen {
		if c != 0 {
			t.Fatalf("piece %x: %d more in the input than in the output", k[:4], c)
		}
	}
}
