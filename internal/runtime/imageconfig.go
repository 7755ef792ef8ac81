package runtime

import (
	"context"
	_ "crypto/sha256" // digest algorithms go-digest verifies with
	_ "crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Limits on reading an image's metadata from containerd's content store.
// Indexes, manifests and configs are small JSON documents (a few KiB, a
// large multi-platform index some tens of KiB); anything bigger is not
// what the image claims to be, and is refused before it is read.
const (
	maxImageBlob       = 4 << 20 // bytes of one index, manifest or config
	maxIndexDepth      = 4       // indexes nested in indexes
	maxIndexCandidates = 4       // manifests of an index tried, best platform first
)

// Media types of the documents that lead from an image to its config.
const (
	mediaTypeOCIIndex          = ocispec.MediaTypeImageIndex
	mediaTypeOCIManifest       = ocispec.MediaTypeImageManifest
	mediaTypeDockerManifestV2  = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestLst = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// blobDesc names a blob of the content store: what it is, its digest
// ("sha256:<hex>") and its size (0: unknown).
type blobDesc struct {
	mediaType string
	digest    string
	size      int64
}

// blobFetcher reads the blob d, verified against its digest.
type blobFetcher func(ctx context.Context, d blobDesc) ([]byte, error)

// errPlatformMismatch: a manifest that an index lists without a platform
// turned out, from its config, to be for another platform.
var errPlatformMismatch = errors.New("image config is for another platform")

// imagePlatform is the platform whose manifest is read from a
// multi-platform image: this node's (linux/GOARCH, with the CPU variant on
// ARM), with containerd's compatibility order (arm64 runs arm/v8, then
// arm/v7, ...).
var imagePlatform = sync.OnceValue(platforms.Default)

// imageDocument is the part of an index or a manifest that the resolution
// reads (Docker's and OCI's share these fields).
type imageDocument struct {
	MediaType string             `json:"mediaType"`
	Manifests []jsonDescriptor   `json:"manifests"` // index
	Config    *jsonDescriptor    `json:"config"`    // manifest
	Layers    *[]json.RawMessage `json:"layers"`    // manifest (only its presence)
}

type jsonDescriptor struct {
	MediaType string            `json:"mediaType"`
	Digest    string            `json:"digest"`
	Size      int64             `json:"size"`
	Platform  *ocispec.Platform `json:"platform"`
}

func (d jsonDescriptor) blob() blobDesc {
	return blobDesc{mediaType: d.MediaType, digest: d.Digest, size: d.Size}
}

// resolveImageConfig returns the config blob of the image whose target is
// target: a manifest's config, or, for an index (OCI or Docker manifest
// list), the config of the manifest for platform (best match first;
// manifests listed without a platform are checked against their config's
// os and architecture).
func resolveImageConfig(ctx context.Context, fetch blobFetcher, target blobDesc, platform platforms.MatchComparer) ([]byte, error) {
	return resolveConfig(ctx, fetch, target, platform, 0, false)
}

func resolveConfig(ctx context.Context, fetch blobFetcher, d blobDesc, platform platforms.MatchComparer, depth int, checkPlatform bool) ([]byte, error) {
	switch d.mediaType {
	case mediaTypeOCIIndex, mediaTypeDockerManifestLst:
		if depth >= maxIndexDepth {
			return nil, fmt.Errorf("image index %s: indexes nested more than %d deep: %w", d.digest, maxIndexDepth, errdefs.ErrInvalid)
		}
		doc, err := fetchDocument(ctx, fetch, d)
		if err != nil {
			return nil, err
		}
		if doc.Config != nil || doc.Layers != nil {
			return nil, fmt.Errorf("image index %s: has a config or layers, as a manifest does: %w", d.digest, errdefs.ErrInvalid)
		}
		var cands []jsonDescriptor
		for _, m := range doc.Manifests {
			if m.Platform == nil || platform.Match(*m.Platform) {
				cands = append(cands, m)
			}
		}
		// Best platform first; entries without a platform last (they are
		// checked against their config).
		slices.SortStableFunc(cands, func(a, b jsonDescriptor) int {
			switch {
			case a.Platform == nil && b.Platform == nil:
				return 0
			case a.Platform == nil:
				return 1
			case b.Platform == nil:
				return -1
			case platform.Less(*a.Platform, *b.Platform):
				return -1
			case platform.Less(*b.Platform, *a.Platform):
				return 1
			}
			return 0
		})
		var firstErr error
		for i, m := range cands {
			if i == maxIndexCandidates {
				break
			}
			cfg, err := resolveConfig(ctx, fetch, m.blob(), platform, depth+1, m.Platform == nil)
			if err == nil {
				return cfg, nil
			}
			if ctx.Err() != nil {
				return nil, err
			}
			// A manifest of the index that is not in the content store (a
			// pull fetches only the platforms it needs) or not for this
			// platform: try the next.
			if !errors.Is(err, errPlatformMismatch) && !errors.Is(err, errdefs.ErrNotFound) && status.Code(err) != codes.NotFound {
				return nil, err
			}
			if firstErr == nil && !errors.Is(err, errPlatformMismatch) {
				firstErr = err
			}
		}
		if firstErr != nil {
			return nil, firstErr
		}
		return nil, fmt.Errorf("image index %s: no manifest for platform %s: %w", d.digest, platforms.FormatAll(platforms.DefaultSpec()), errdefs.ErrNotFound)

	case mediaTypeOCIManifest, mediaTypeDockerManifestV2:
		doc, err := fetchDocument(ctx, fetch, d)
		if err != nil {
			return nil, err
		}
		if doc.Manifests != nil {
			return nil, fmt.Errorf("image manifest %s: has manifests, as an index does: %w", d.digest, errdefs.ErrInvalid)
		}
		if doc.Config == nil || doc.Config.Digest == "" {
			return nil, fmt.Errorf("image manifest %s: no config: %w", d.digest, errdefs.ErrInvalid)
		}
		cfg, err := fetch(ctx, doc.Config.blob())
		if err != nil {
			return nil, err
		}
		if checkPlatform {
			var p ocispec.Platform
			if err := json.Unmarshal(cfg, &p); err != nil {
				return nil, fmt.Errorf("image config %s: %w: %v", doc.Config.Digest, errdefs.ErrInvalid, err)
			}
			if !platform.Match(p) {
				return nil, fmt.Errorf("manifest %s: %w (%s)", d.digest, errPlatformMismatch, platforms.FormatAll(p))
			}
		}
		return cfg, nil
	}
	return nil, fmt.Errorf("image document %s: media type %q is neither an index nor a manifest: %w", d.digest, d.mediaType, errdefs.ErrInvalid)
}

// fetchDocument reads and decodes the index or manifest d; a mediaType
// written in the document must agree with the descriptor's kind.
func fetchDocument(ctx context.Context, fetch blobFetcher, d blobDesc) (imageDocument, error) {
	b, err := fetch(ctx, d)
	if err != nil {
		return imageDocument{}, err
	}
	var doc imageDocument
	if err := json.Unmarshal(b, &doc); err != nil {
		return imageDocument{}, fmt.Errorf("%s %s: %w: %v", d.mediaType, d.digest, errdefs.ErrInvalid, err)
	}
	if doc.MediaType != "" && isIndexType(doc.MediaType) != isIndexType(d.mediaType) {
		return imageDocument{}, fmt.Errorf("%s %s: the document says it is a %s: %w", d.mediaType, d.digest, doc.MediaType, errdefs.ErrInvalid)
	}
	return doc, nil
}

func isIndexType(mt string) bool { return mt == mediaTypeOCIIndex || mt == mediaTypeDockerManifestLst }

// readBlob reads blob d from containerd's content service. A blob over
// maxImageBlob is refused (before reading when its descriptor says so); what
// is read must have d's size and digest.
func readBlob(ctx context.Context, cs contentapi.ContentClient, d blobDesc) ([]byte, error) {
	dgst, err := parseDigest(d.digest)
	if err != nil {
		return nil, err
	}
	if d.size < 0 || d.size > maxImageBlob {
		return nil, fmt.Errorf("blob %s (%s): %d bytes, over the %d-byte limit on image metadata: %w", d.digest, d.mediaType, d.size, maxImageBlob, errdefs.ErrInvalid)
	}
	want := d.size
	if want == 0 {
		want = maxImageBlob + 1 // unknown: read up to one byte past the limit
	}
	stream, err := cs.Read(ctx, &contentapi.ReadContentRequest{Digest: d.digest, Size: want})
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 0, min(want, 64<<10))
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if resp.Offset != int64(len(buf)) {
			return nil, fmt.Errorf("blob %s: chunk at offset %d, want %d: %w", d.digest, resp.Offset, len(buf), errdefs.ErrInvalid)
		}
		if int64(len(buf))+int64(len(resp.Data)) > want || len(buf)+len(resp.Data) > maxImageBlob {
			return nil, fmt.Errorf("blob %s (%s): more than %d bytes: %w", d.digest, d.mediaType, min(want, maxImageBlob), errdefs.ErrInvalid)
		}
		buf = append(buf, resp.Data...)
	}
	if d.size > 0 && int64(len(buf)) != d.size {
		return nil, fmt.Errorf("blob %s: read %d bytes, its descriptor says %d: %w", d.digest, len(buf), d.size, errdefs.ErrInvalid)
	}
	if got := dgst.Algorithm().FromBytes(buf); got != dgst {
		return nil, fmt.Errorf("blob %s: content has digest %s: %w", d.digest, got, errdefs.ErrInvalid)
	}
	return buf, nil
}

// parseDigest checks that dgst is "<algorithm>:<hex>" with an algorithm
// this binary can verify: sha256, sha384 or sha512 (go-digest's algorithms
// whose hashes the imports above link in).
func parseDigest(dgst string) (digest.Digest, error) {
	d, err := digest.Parse(dgst)
	if err != nil {
		return "", fmt.Errorf("digest %q: %w: %v", dgst, errdefs.ErrInvalid, err)
	}
	return d, nil
}
