package safetensors

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

func sample(t testing.TB) []byte {
	var buf bytes.Buffer
	err := Write(&buf, []Entry{
		NewEntry("a", F32, []int{2, 3}, []float32{1, 2, 3, 4, 5, float32(math.Inf(-1))}),
		NewEntry("b", U8, []int{4}, []uint8{9, 8, 7, 6}),
		NewEntry("c", I32, []int{1, 1}, []int32{-5}),
		NewEntry("scalar", F64, []int{}, []float64{math.Pi}),
		NewEntry("empty", BF16, []int{0, 7}, []uint16{}),
	}, map[string]string{"format": "test", "k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	raw := sample(t)
	f, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata["format"] != "test" || f.Metadata["k"] != "v" {
		t.Fatalf("metadata %v", f.Metadata)
	}
	if got := f.Names(); strings.Join(got, ",") != "a,b,c,empty,scalar" {
		t.Fatalf("names %v", got)
	}
	shape, a, err := Tensor[float32](f, "a", F32)
	if err != nil || len(shape) != 2 || shape[1] != 3 || a[4] != 5 || !math.IsInf(float64(a[5]), -1) {
		t.Fatalf("a: %v %v %v", shape, a, err)
	}
	_, c, err := Tensor[int32](f, "c", I32)
	if err != nil || c[0] != -5 {
		t.Fatalf("c: %v %v", c, err)
	}
	_, s, err := Tensor[float64](f, "scalar")
	if err != nil || len(s) != 1 || s[0] != math.Pi {
		t.Fatalf("scalar: %v %v", s, err)
	}
	if _, _, err := Tensor[int32](f, "a", I32); err == nil {
		t.Fatal("read F32 as I32")
	}
	if _, _, err := Tensor[uint8](f, "a"); err == nil {
		t.Fatal("read a 4-byte dtype into bytes")
	}
	if _, _, err := Tensor[uint8](f, "missing"); err == nil {
		t.Fatal("read a missing tensor")
	}
	if f.BytesRead() != 24+4+8 {
		t.Fatalf("BytesRead = %d, want 36", f.BytesRead())
	}
	if len(raw[8:8+int(leU64(raw))])%8 != 0 {
		t.Fatal("header not padded to 8 bytes")
	}
}

func leU64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func TestMalformed(t *testing.T) {
	raw := sample(t)
	n := int(leU64(raw))
	head := string(raw[8 : 8+n])
	with := func(h string) []byte {
		for len(h) < n {
			h += " "
		}
		return append(append(append([]byte{}, raw[:8]...), h...), raw[8+n:]...)
	}
	cases := map[string][]byte{
		"short":             raw[:5],
		"header too long":   raw[:8+n-1],
		"not json":          with("[1,2,3]"),
		"bad dtype":         with(strings.Replace(head, `"U8"`, `"U9"`, 1)),
		"offset past end":   with(strings.Replace(head, `"data_offsets":[24,28]`, `"data_offsets":[24,2800]`, 1)),
		"size mismatch":     with(strings.Replace(head, `"shape":[4]`, `"shape":[5]`, 1)),
		"negative dim":      with(strings.Replace(head, `"shape":[4]`, `"shape":[-4]`, 1)),
		"overlap":           with(strings.Replace(head, `"data_offsets":[24,28]`, `"data_offsets":[20,24]`, 1)),
		"missing shape":     with(strings.Replace(head, `,"shape":[4]`, ``, 1)),
		"metadata not strs": with(strings.Replace(head, `"k":"v"`, `"k":5  `, 1)),
	}
	for name, b := range cases {
		_, err := Parse(b)
		if err == nil {
			t.Errorf("%s: parsed", name)
		} else if !errors.Is(err, ErrFormat) {
			t.Errorf("%s: error %v does not wrap ErrFormat", name, err)
		}
	}
}

// FuzzParse checks that no input makes the reader panic, and that whatever parses can be read.
func FuzzParse(f *testing.F) {
	f.Add(sample(f))
	f.Add([]byte{})
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, '{', '}'})
	f.Add([]byte("\x20\x00\x00\x00\x00\x00\x00\x00{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}\x00\x00\x80\x3f"))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse(b)
		if err != nil {
			return
		}
		for _, n := range file.Names() {
			info, raw, err := file.Raw(n)
			if err != nil {
				t.Fatalf("%s: parsed but unreadable: %v", n, err)
			}
			if int64(len(raw)) != info.End-info.Begin || info.NumElements()*info.DType.Size() != len(raw) {
				t.Fatalf("%s: %d bytes for %v %v", n, len(raw), info.DType, info.Shape)
			}
		}
	})
}
