package cudaops

import "testing"

func TestGroupMajorScales(t *testing.T) {
	const e, n, kd = 2, 3, 256 // 8 scale bytes a row, 2 groups
	s := make([]uint8, e*n*kd/32)
	for i := range s {
		s[i] = uint8(i)
	}
	got := groupMajorScales(s, e, n, kd)
	// Expert 1, group 1, row 2: row-major bytes ((1·3+2)·8 + 4 ..) = 44..47, at ((1·2+1)·3+2)·4 = 44.
	// Expert 0, group 1, row 0: bytes 4..7, at (1·3+0)·4 = 12.
	cases := []struct{ at, want int }{{0, 0}, {3, 3}, {4, 8}, {8, 16}, {12, 4}, {16, 12}, {44, 44}, {24, 24}, {28, 32}, {36, 28}}
	for _, c := range cases {
		if int(got[c.at]) != c.want {
			t.Errorf("byte %d = %d, want %d", c.at, got[c.at], c.want)
		}
	}
	seen := make([]bool, len(s))
	for _, v := range got {
		seen[v] = true
	}
	for i, ok := range seen {
		if !ok {
			t.Fatalf("scale byte %d lost", i)
		}
	}
}
