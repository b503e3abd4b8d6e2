package testimages

import "github.com/liquidmetal-go/liquidmetal/internal/imagebuild"

// ExtractVmlinux returns the uncompressed kernel ELF inside an x86 bzImage;
// see imagebuild.ExtractVmlinux, which owns the implementation.
func ExtractVmlinux(bzImage []byte) ([]byte, error) { return imagebuild.ExtractVmlinux(bzImage) }

// bzImagePayload returns the compressed kernel inside a bzImage.
func bzImagePayload(img []byte) ([]byte, error) { return imagebuild.BzImagePayload(img) }

// The kernel's legacy LZ4 framing (magic number, largest block), which the
// tests' encoder writes.
const (
	lz4LegacyMagic = 0x184c2102
	lz4LegacyChunk = 8 << 20
)
