package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"unsafe"
)

// Elem is the set of Go element types a tensor can be read into or written from.
type Elem interface {
	~uint8 | ~int8 | ~uint16 | ~int16 | ~uint32 | ~int32 | ~float32 | ~uint64 | ~int64 | ~float64
}

func sizeOf[T Elem](v T) int { return int(unsafe.Sizeof(v)) }

var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// swap reverses the bytes of every size-byte element of b in place.
func swap(b []byte, size int) {
	for i := 0; i+size <= len(b); i += size {
		slices.Reverse(b[i : i+size])
	}
}

// decode reinterprets little-endian bytes as elements of T.
func decode[T Elem](b []byte) []T {
	var zero T
	size := sizeOf(zero)
	out := make([]T, len(b)/size)
	if len(out) == 0 {
		return out
	}
	dst := unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), len(out)*size)
	copy(dst, b)
	if !littleEndian {
		swap(dst, size)
	}
	return out
}

// Bytes returns the little-endian bytes of a slice of elements.
func Bytes[T Elem](v []T) []byte {
	if len(v) == 0 {
		return nil
	}
	size := sizeOf(v[0])
	b := make([]byte, len(v)*size)
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), len(b)))
	if !littleEndian {
		swap(b, size)
	}
	return b
}

// Entry is a tensor to write: its name, dtype, shape and little-endian bytes.
type Entry struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// NewEntry makes an Entry from a slice of elements; the dtype's size must match T's.
func NewEntry[T Elem](name string, d DType, shape []int, v []T) Entry {
	return Entry{Name: name, DType: d, Shape: shape, Data: Bytes(v)}
}

// Write writes a safetensors file holding the entries, in the given order, and the metadata.
func Write(w io.Writer, entries []Entry, metadata map[string]string) error {
	return WriteFunc(w, entries, metadata, func(i int) ([]byte, error) { return entries[i].Data, nil })
}

// WriteFunc writes a safetensors file whose tensors are described by entries (their Data is
// ignored) and whose bytes data(i) returns, one tensor at a time in order, so that a file larger
// than memory can be written. Each data(i) must return exactly the bytes its shape and dtype
// need.
func WriteFunc(w io.Writer, entries []Entry, metadata map[string]string, data func(i int) ([]byte, error)) error {
	head := map[string]any{}
	if len(metadata) > 0 {
		head["__metadata__"] = metadata
	}
	var off int64
	sizes := make([]int64, len(entries))
	for i, e := range entries {
		if e.Name == "__metadata__" || head[e.Name] != nil {
			return fmt.Errorf("safetensors: duplicate or reserved tensor name %q", e.Name)
		}
		if e.DType.Size() == 0 {
			return fmt.Errorf("safetensors: tensor %q has unknown dtype %q", e.Name, e.DType)
		}
		n := int64(e.DType.Size())
		for _, d := range e.Shape {
			if d < 0 {
				return fmt.Errorf("safetensors: tensor %q has shape %v", e.Name, e.Shape)
			}
			n *= int64(d)
		}
		shape := e.Shape
		if shape == nil {
			shape = []int{}
		}
		head[e.Name] = map[string]any{"dtype": e.DType, "shape": shape, "data_offsets": []int64{off, off + n}}
		sizes[i] = n
		off += n
	}
	hb, err := json.Marshal(head)
	if err != nil {
		return err
	}
	for len(hb)%8 != 0 { // keep the data section 8-byte aligned, as the reference writer does
		hb = append(hb, ' ')
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hb)))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err := w.Write(hb); err != nil {
		return err
	}
	for i, e := range entries {
		b, err := data(i)
		if err != nil {
			return err
		}
		if int64(len(b)) != sizes[i] {
			return fmt.Errorf("safetensors: tensor %q: %s shape %v needs %d bytes, has %d", e.Name, e.DType, e.Shape, sizes[i], len(b))
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}
