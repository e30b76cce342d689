// Package safetensors reads and writes the safetensors format: an 8-byte little-endian header
// length N, N bytes of JSON describing each tensor (dtype, shape, byte offsets into the data
// section) plus optional string metadata under "__metadata__", then the data section.
//
// Reading is lazy: Open and Parse read and validate the header only, and each tensor's bytes
// are read from the underlying io.ReaderAt when asked for, so one tensor of a large file can be
// read without touching the rest. Every offset, shape and dtype is checked against the file
// before any data is read; a malformed file gives an error, never a panic.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"sync/atomic"
)

// DType is a tensor element type as the header spells it ("F32", "U8", ...).
type DType string

// The element types this package knows, with their sizes in bytes.
const (
	BOOL    DType = "BOOL"
	U8      DType = "U8"
	I8      DType = "I8"
	F8E4M3  DType = "F8_E4M3"
	F8E5M2  DType = "F8_E5M2"
	F8E8M0  DType = "F8_E8M0"
	I16     DType = "I16"
	U16     DType = "U16"
	F16     DType = "F16"
	BF16    DType = "BF16"
	I32     DType = "I32"
	U32     DType = "U32"
	F32     DType = "F32"
	F64     DType = "F64"
	I64     DType = "I64"
	U64     DType = "U64"
	maxHead       = 100 << 20 // the reference implementation's header limit
)

// Size returns the size of one element in bytes, or 0 for an unknown type.
func (d DType) Size() int {
	switch d {
	case BOOL, U8, I8, F8E4M3, F8E5M2, F8E8M0:
		return 1
	case I16, U16, F16, BF16:
		return 2
	case I32, U32, F32:
		return 4
	case F64, I64, U64:
		return 8
	}
	return 0
}

// Info describes one tensor of a file.
type Info struct {
	Name  string
	DType DType
	Shape []int
	// Begin and End are byte offsets into the data section.
	Begin, End int64
}

// NumElements returns the product of the shape.
func (t *Info) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// File is an opened safetensors file: its header, and a reader for the tensors' bytes.
type File struct {
	// Metadata holds the header's "__metadata__" strings (empty when absent).
	Metadata map[string]string
	tensors  map[string]*Info
	names    []string
	r        io.ReaderAt
	dataOff  int64 // offset of the data section in r
	closer   io.Closer
	read     atomic.Int64
}

// ErrFormat is wrapped by every error about a malformed file.
var ErrFormat = errors.New("malformed safetensors")

func formatErr(f string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(f, a...))
}

// Open opens the file at path and reads its header. Close it when done.
func Open(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, err
	}
	f, err := NewReader(fh, st.Size())
	if err != nil {
		fh.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.closer = fh
	return f, nil
}

// Parse reads a safetensors file held in memory.
func Parse(b []byte) (*File, error) {
	return NewReader(bytesReaderAt(b), int64(len(b)))
}

type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// NewReader reads and validates the header of a safetensors file of the given size read
// through r.
func NewReader(r io.ReaderAt, size int64) (*File, error) {
	var lenBuf [8]byte
	if size < 8 {
		return nil, formatErr("file of %d bytes is shorter than the 8-byte header length", size)
	}
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > maxHead || int64(n) > size-8 {
		return nil, formatErr("header length %d exceeds the file (%d bytes) or the %d-byte limit", n, size, maxHead)
	}
	head := make([]byte, n)
	if _, err := r.ReadAt(head, 8); err != nil {
		return nil, err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(head, &raw); err != nil {
		return nil, formatErr("header is not a JSON object: %v", err)
	}
	f := &File{Metadata: map[string]string{}, tensors: map[string]*Info{}, r: r, dataOff: 8 + int64(n)}
	dataLen := size - f.dataOff
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Metadata); err != nil {
				return nil, formatErr("__metadata__ is not an object of strings: %v", err)
			}
			if f.Metadata == nil {
				f.Metadata = map[string]string{}
			}
			continue
		}
		var h struct {
			DType   *DType   `json:"dtype"`
			Shape   *[]int64 `json:"shape"`
			Offsets *[]int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(msg, &h); err != nil {
			return nil, formatErr("tensor %q: %v", name, err)
		}
		if h.DType == nil || h.Shape == nil || h.Offsets == nil {
			return nil, formatErr("tensor %q lacks dtype, shape or data_offsets", name)
		}
		es := h.DType.Size()
		if es == 0 {
			return nil, formatErr("tensor %q has unknown dtype %q", name, *h.DType)
		}
		if len(*h.Offsets) != 2 {
			return nil, formatErr("tensor %q: data_offsets has %d entries, expected 2", name, len(*h.Offsets))
		}
		b, e := (*h.Offsets)[0], (*h.Offsets)[1]
		if b < 0 || e < b || e > dataLen {
			return nil, formatErr("tensor %q: data_offsets [%d, %d] outside the data section of %d bytes", name, b, e, dataLen)
		}
		shape := make([]int, len(*h.Shape))
		count := int64(1)
		for i, d := range *h.Shape {
			if d < 0 || d > math.MaxInt32 {
				return nil, formatErr("tensor %q: dimension %d is %d", name, i, d)
			}
			shape[i] = int(d)
			if count > 0 && int64(d) > (math.MaxInt64/int64(es))/count {
				return nil, formatErr("tensor %q: shape %v is too large", name, *h.Shape)
			}
			count *= d
		}
		if count*int64(es) != e-b {
			return nil, formatErr("tensor %q: %s shape %v needs %d bytes, data_offsets give %d", name, *h.DType, *h.Shape, count*int64(es), e-b)
		}
		f.tensors[name] = &Info{Name: name, DType: *h.DType, Shape: shape, Begin: b, End: e}
		f.names = append(f.names, name)
	}
	sort.Strings(f.names)
	// Tensors must not overlap: sort by offset and compare neighbours.
	byOff := make([]*Info, 0, len(f.names))
	for _, n := range f.names {
		byOff = append(byOff, f.tensors[n])
	}
	sort.Slice(byOff, func(i, j int) bool { return byOff[i].Begin < byOff[j].Begin })
	for i := 1; i < len(byOff); i++ {
		if byOff[i].Begin < byOff[i-1].End {
			return nil, formatErr("tensors %q and %q overlap", byOff[i-1].Name, byOff[i].Name)
		}
	}
	return f, nil
}

// Close closes the file opened by Open; it does nothing for Parse and NewReader.
func (f *File) Close() error {
	if f.closer != nil {
		return f.closer.Close()
	}
	return nil
}

// Names returns the tensors' names in sorted order.
func (f *File) Names() []string { return append([]string(nil), f.names...) }

// Info returns the description of the named tensor, or nil.
func (f *File) Info(name string) *Info { return f.tensors[name] }

// BytesRead returns how many data bytes the file's tensors have read so far.
func (f *File) BytesRead() int64 { return f.read.Load() }

// Raw reads the named tensor's bytes.
func (f *File) Raw(name string) (*Info, []byte, error) {
	t := f.tensors[name]
	if t == nil {
		return nil, nil, fmt.Errorf("safetensors: no tensor %q", name)
	}
	b := make([]byte, t.End-t.Begin)
	if err := f.ReadInto(t, b); err != nil {
		return nil, nil, err
	}
	return t, b, nil
}

// ReadInto reads the bytes of t, len(dst) == t.End - t.Begin, into dst.
func (f *File) ReadInto(t *Info, dst []byte) error {
	if int64(len(dst)) != t.End-t.Begin {
		return fmt.Errorf("safetensors: tensor %q has %d bytes, buffer %d", t.Name, t.End-t.Begin, len(dst))
	}
	return f.ReadRange(t, 0, dst)
}

// ReadRange reads len(dst) bytes of t starting at byte off of the tensor's data.
func (f *File) ReadRange(t *Info, off int64, dst []byte) error {
	if off < 0 || off+int64(len(dst)) > t.End-t.Begin {
		return fmt.Errorf("safetensors: range [%d, %d) outside tensor %q of %d bytes", off, off+int64(len(dst)), t.Name, t.End-t.Begin)
	}
	if len(dst) == 0 {
		return nil
	}
	n, err := f.r.ReadAt(dst, f.dataOff+t.Begin+off)
	f.read.Add(int64(n))
	if n == len(dst) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("safetensors: reading tensor %q: %w", t.Name, err)
}

// Tensor reads the named tensor, checking its dtype, and returns its shape and elements.
// T must match the dtype's size and kind: float32 for F32, uint8 for U8 (and the 8-bit float
// types), int32 for I32, uint16 for BF16 and F16 bit patterns, and so on.
func Tensor[T Elem](f *File, name string, want ...DType) ([]int, []T, error) {
	t := f.tensors[name]
	if t == nil {
		return nil, nil, fmt.Errorf("safetensors: no tensor %q", name)
	}
	ok := len(want) == 0
	for _, d := range want {
		ok = ok || t.DType == d
	}
	var zero T
	if !ok || t.DType.Size() != sizeOf(zero) {
		return nil, nil, fmt.Errorf("safetensors: tensor %q has dtype %s, expected %v", name, t.DType, want)
	}
	_, b, err := f.Raw(name)
	if err != nil {
		return nil, nil, err
	}
	return append([]int(nil), t.Shape...), decode[T](b), nil
}
