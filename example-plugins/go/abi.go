package main

// The canonical ABI of the plughost world (wit/plugin.wit), by hand: the offsets
// of the records this plug-in reads, the export, the imports and cabi_realloc.

import "unsafe"

//go:wasmimport plughost:plugin/tracing@0.1.0 trace
func traceImport(ptr unsafe.Pointer, length uint32)

func trace(message string) {
	traceImport(unsafe.Pointer(unsafe.StringData(message)), uint32(len(message)))
}

// A plug-in error (WIT `plugin-error`).
type pluginError struct {
	retryable bool
	message   string
}

func (e *pluginError) Error() string { return e.message }

func permanent(message string) error { return &pluginError{message: message} }

// Memory the host asked for, kept reachable so the garbage collector leaves it
// alone until the next invocation starts.
var pinned [][]byte

// The return area of `execute`: result<execution-result, plugin-error>.
var ret [32]byte

//go:wasmexport cabi_realloc
func cabiRealloc(ptr, oldSize, align, newSize uint32) uint32 {
	if newSize == 0 {
		return align
	}
	buf := make([]byte, newSize+align)
	start := (uintptr(unsafe.Pointer(&buf[0])) + uintptr(align) - 1) &^ (uintptr(align) - 1)
	if ptr != 0 && oldSize > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(start)), newSize), unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), oldSize))
	}
	pinned = append(pinned, buf)
	return uint32(start)
}

//go:wasmexport plughost:plugin/handler@0.1.0#execute
func executeExport(ctx uint32) uint32 {
	err := execute(&context{base: uintptr(ctx)})
	// What the host lowered for this call is no longer needed.
	pinned = pinned[:0]
	clear(ret[:])
	if err == nil {
		// ok(execution-result { [], [], [] }): three empty lists.
		return uint32(uintptr(unsafe.Pointer(&ret[0])))
	}
	e, ok := err.(*pluginError)
	if !ok {
		e = &pluginError{message: err.Error()}
	}
	message := []byte(e.message)
	pinned = append(pinned, message)
	ret[0] = 1 // err
	if e.retryable {
		ret[4] = 1
	}
	put32(&ret, 8, uint32(uintptr(unsafe.Pointer(unsafe.SliceData(message)))))
	put32(&ret, 12, uint32(len(message)))
	return uint32(uintptr(unsafe.Pointer(&ret[0])))
}

func put32(b *[32]byte, at int, v uint32) {
	b[at], b[at+1], b[at+2], b[at+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func u8(p uintptr) uint8   { return *(*uint8)(unsafe.Pointer(p)) }
func u32(p uintptr) uint32 { return *(*uint32)(unsafe.Pointer(p)) }

// A WIT string at p: (pointer, length).
func str(p uintptr) string {
	return unsafe.String((*byte)(unsafe.Pointer(uintptr(u32(p)))), int(u32(p+4)))
}

// Layouts (size, alignment): string (8, 4); option<string> (12, 4); value (24, 8:
// tag, payload at 8); attribute (32, 8: name, value at 8); entity (28, 4: name,
// id option at 8, attributes list at 20); parameter-value (80, 8: tag, payload at
// 8); parameter (88, 8: name, value at 8).
const (
	contextInputParameters = 96
	contextConfiguration   = 136
	parameterSize          = 88
	parameterValueEntity   = 1
	entityAttributes       = 20
	attributeSize          = 32
	valueText              = 1
)

type context struct{ base uintptr }

type entity struct{ base uintptr }

func (c *context) configuration() (string, bool) {
	p := c.base + contextConfiguration
	if u8(p) == 0 {
		return "", false
	}
	return str(p + 4), true
}

func (c *context) target() (entity, bool) {
	list := c.base + contextInputParameters
	items, n := uintptr(u32(list)), int(u32(list+4))
	for i := 0; i < n; i++ {
		p := items + uintptr(i)*parameterSize
		if str(p) == "Target" && u8(p+8) == parameterValueEntity {
			return entity{base: p + 16}, true
		}
	}
	return entity{}, false
}

func (e entity) text(name string) (string, bool) {
	list := e.base + entityAttributes
	items, n := uintptr(u32(list)), int(u32(list+4))
	for i := 0; i < n; i++ {
		p := items + uintptr(i)*attributeSize
		if str(p) == name && u8(p+8) == valueText {
			return str(p + 16), true
		}
	}
	return "", false
}
