package imagebuild

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// ExtractVmlinux returns the uncompressed kernel ELF inside an x86 bzImage
// (the method of the kernel's scripts/extract-vmlinux, guided by the boot
// protocol header instead of a scan for magic numbers). The result is the
// stripped vmlinux the bzImage was built from, relocation table appended,
// which is what Firecracker and Cloud Hypervisor load.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	payload, err := BzImagePayload(bzImage)
	if err != nil {
		return nil, err
	}
	// The kernel build appends the uncompressed size (le32) to every
	// compressed payload (for gzip it is the gzip trailer's ISIZE).
	if len(payload) < 8 {
		return nil, fmt.Errorf("bzImage payload of %d bytes: %w", len(payload), errdefs.ErrInvalidArgument)
	}
	size := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	if size == 0 || size > 1<<30 {
		return nil, fmt.Errorf("bzImage payload claims %d uncompressed bytes: %w", size, errdefs.ErrInvalidArgument)
	}
	format, r, err := payloadReader(payload)
	if err != nil {
		return nil, err
	}
	out := make([]byte, size)
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, fmt.Errorf("decompress %s kernel payload: %w", format, err)
	}
	f, err := elf.NewFile(bytes.NewReader(out))
	if err != nil {
		return nil, fmt.Errorf("decompressed %s payload is not an ELF file: %w", format, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return nil, fmt.Errorf("decompressed kernel is %v %v, want x86-64 executable: %w", f.Machine, f.Type, errdefs.ErrInvalidArgument)
	}
	return out, nil
}

// BzImagePayload returns the compressed kernel inside a bzImage, located
// by the setup header (boot protocol 2.08 and later).
func BzImagePayload(img []byte) ([]byte, error) {
	if len(img) < 0x250 || string(img[0x202:0x206]) != "HdrS" {
		return nil, fmt.Errorf("not a bzImage (no HdrS setup header): %w", errdefs.ErrInvalidArgument)
	}
	if v := binary.LittleEndian.Uint16(img[0x206:]); v < 0x0208 {
		return nil, fmt.Errorf("boot protocol %#x has no payload fields: %w", v, errdefs.ErrInvalidArgument)
	}
	setupSects := int(img[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	start := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(img[0x248:]))
	end := start + int(binary.LittleEndian.Uint32(img[0x24c:]))
	if start >= end || end > len(img) {
		return nil, fmt.Errorf("bzImage payload [%d,%d) outside the %d-byte image: %w", start, end, len(img), errdefs.ErrInvalidArgument)
	}
	return img[start:end], nil
}

// payloadReader picks the decompressor by the payload's magic number.
func payloadReader(p []byte) (string, io.Reader, error) {
	switch {
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		r, err := gzip.NewReader(bytes.NewReader(p))
		if err != nil {
			return "gzip", nil, err
		}
		r.Multistream(false)
		return "gzip", r, nil
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		r, err := xz.ReaderConfig{SingleStream: true}.NewReader(bytes.NewReader(p))
		return "xz", r, err
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(bytes.NewReader(p), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<31))
		if err != nil {
			return "zstd", nil, err
		}
		return "zstd", d.IOReadCloser(), nil
	case bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}):
		return "lz4", &lz4LegacyReader{src: p}, nil
	case bytes.HasPrefix(p, []byte("BZh")):
		return "bzip2", bzip2.NewReader(bytes.NewReader(p)), nil
	case bytes.HasPrefix(p, []byte{0x5d, 0x00, 0x00}):
		r, err := lzma.NewReader(bytes.NewReader(p))
		return "lzma", r, err
	case bytes.HasPrefix(p, []byte{0x89, 'L', 'Z', 'O'}):
		return "lzo", nil, fmt.Errorf("lzo-compressed kernels are not supported: %w", errdefs.ErrNotImplemented)
	}
	return "", nil, fmt.Errorf("unknown kernel compression (magic % x): %w", p[:min(len(p), 6)], errdefs.ErrInvalidArgument)
}

// lz4LegacyReader decodes the legacy LZ4 format the kernel uses: a magic
// number, then blocks of (le32 compressed size, LZ4 block) that each
// decompress to at most 8 MiB. The kernel stops once it has the size it
// expects; so does the caller (io.ReadFull), which keeps this reader from
// misreading the appended size as a block header.
type lz4LegacyReader struct {
	src []byte
	off int
	buf []byte // decoded, not yet returned
}

const (
	lz4LegacyMagic = 0x184c2102
	lz4LegacyChunk = 8 << 20
)

func (r *lz4LegacyReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.off == 0 {
			r.off = 4 // magic
		}
		if r.off+4 > len(r.src) {
			return 0, io.EOF
		}
		n := binary.LittleEndian.Uint32(r.src[r.off:])
		r.off += 4
		if n == lz4LegacyMagic { // concatenated stream
			continue
		}
		if int(n) > len(r.src)-r.off {
			return 0, fmt.Errorf("lz4 block of %d bytes past the end of the payload: %w", n, io.ErrUnexpectedEOF)
		}
		out := make([]byte, lz4LegacyChunk)
		m, err := lz4.UncompressBlock(r.src[r.off:r.off+int(n)], out)
		if err != nil {
			return 0, fmt.Errorf("lz4 block at %d: %w", r.off, err)
		}
		r.off += int(n)
		r.buf = out[:m]
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}
