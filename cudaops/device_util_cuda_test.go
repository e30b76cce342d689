//go:build cudaops

package cudaops

import "testing"

// TestGraphFloor checks MeasureGraphFloor's argument errors and that graphs of one to seven
// chained kernels replay (each a positive time), and logs those times: the fixed cost per
// graph launch that a forward of that many kernels pays on this device.
func TestGraphFloor(t *testing.T) {
	for _, c := range [][3]int{{0, 1, 1}, {1, 0, 1}, {1, 1, 0}} {
		if _, err := MeasureGraphFloor(c[0], c[1], c[2]); err == nil {
			t.Errorf("MeasureGraphFloor(%d, %d, %d): no error", c[0], c[1], c[2])
		}
	}
	for n := 1; n <= 7; n++ {
		d, err := MeasureGraphFloor(n, 5, 200)
		if err != nil {
			t.Fatal(err)
		}
		if d <= 0 {
			t.Fatalf("%d kernels: %v a replay", n, d)
		}
		t.Logf("a graph of %d chained one-block kernels: %.2f µs a replay", n, float64(d.Nanoseconds())/1e3)
	}
}
