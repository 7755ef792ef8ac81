package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/platforms"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// blobStore is an in-memory content store for the resolution logic: blobs
// by digest; a missing one is a gRPC NotFound, as containerd answers.
type blobStore struct {
	blobs map[string][]byte
	reads []string
}

func (s *blobStore) put(mediaType string, v any) blobDesc {
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			panic(err)
		}
	}
	sum := sha256.Sum256(b)
	d := blobDesc{mediaType: mediaType, digest: "sha256:" + hex.EncodeToString(sum[:]), size: int64(len(b))}
	if s.blobs == nil {
		s.blobs = map[string][]byte{}
	}
	s.blobs[d.digest] = b
	return d
}

func (s *blobStore) fetch(_ context.Context, d blobDesc) ([]byte, error) {
	s.reads = append(s.reads, d.digest)
	b, ok := s.blobs[d.digest]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "content digest %s: not found", d.digest)
	}
	return b, nil
}

// image adds a config carrying healthcheck retries n for platform
// os/arch, and its manifest; it returns the manifest's descriptor.
func (s *blobStore) image(os, arch string, n int) blobDesc {
	cfg := s.put("application/vnd.oci.image.config.v1+json", map[string]any{
		"os": os, "architecture": arch,
		"config": map[string]any{"Healthcheck": map[string]any{"Test": []string{"CMD", "true"}, "Retries": n}},
	})
	return s.put(mediaTypeOCIManifest, map[string]any{
		"schemaVersion": 2, "mediaType": mediaTypeOCIManifest,
		"config": desc(cfg, ""), "layers": []any{},
	})
}

func (s *blobStore) index(mediaType string, entries ...map[string]any) blobDesc {
	return s.put(mediaType, map[string]any{"schemaVersion": 2, "mediaType": mediaType, "manifests": entries})
}

// desc is d as an index or manifest entry; platform "os/arch[/variant]",
// "" for none.
func desc(d blobDesc, platform string) map[string]any {
	m := map[string]any{"mediaType": d.mediaType, "digest": d.digest, "size": d.size}
	if platform != "" {
		p := strings.Split(platform, "/")
		pm := map[string]any{"os": p[0], "architecture": p[1]}
		if len(p) == 3 {
			pm["variant"] = p[2]
		}
		m["platform"] = pm
	}
	return m
}

// foreignArch is an architecture this node's platform does not run.
func foreignArch() string {
	if runtime.GOARCH == "s390x" {
		return "ppc64le"
	}
	return "s390x"
}

func retriesOf(t *testing.T, cfg []byte) int {
	t.Helper()
	hc, err := parseHealthcheck(cfg)
	if err != nil || hc == nil {
		t.Fatalf("config %s: healthcheck %+v, %v", cfg, hc, err)
	}
	return hc.Retries
}

func TestResolveImageConfig(t *testing.T) {
	local := "linux/" + runtime.GOARCH
	foreign := "linux/" + foreignArch()
	ctx := context.Background()
	pm := imagePlatform()

	t.Run("manifest", func(t *testing.T) {
		var s blobStore
		m := s.image("linux", foreignArch(), 1) // a single manifest is read whatever its platform
		cfg, err := resolveImageConfig(ctx, s.fetch, m, pm)
		if err != nil || retriesOf(t, cfg) != 1 {
			t.Fatalf("config %s, %v", cfg, err)
		}
	})

	t.Run("index picks the platform, not the first entry", func(t *testing.T) {
		for _, mt := range []string{mediaTypeOCIIndex, mediaTypeDockerManifestLst} {
			var s blobStore
			idx := s.index(mt, desc(s.image("linux", foreignArch(), 1), foreign), desc(s.image("linux", runtime.GOARCH, 2), local))
			cfg, err := resolveImageConfig(ctx, s.fetch, idx, pm)
			if err != nil || retriesOf(t, cfg) != 2 {
				t.Fatalf("%s: config %s, %v", mt, cfg, err)
			}
		}
	})

	t.Run("missing manifest: the next candidate", func(t *testing.T) {
		var s blobStore
		gone := s.image("linux", runtime.GOARCH, 1)
		delete(s.blobs, gone.digest)
		idx := s.index(mediaTypeOCIIndex, desc(gone, local), desc(s.image("linux", runtime.GOARCH, 3), local))
		cfg, err := resolveImageConfig(ctx, s.fetch, idx, pm)
		if err != nil || retriesOf(t, cfg) != 3 {
			t.Fatalf("config %s, %v", cfg, err)
		}
	})

	t.Run("entries without a platform are checked against their config", func(t *testing.T) {
		var s blobStore
		idx := s.index(mediaTypeOCIIndex, desc(s.image("linux", foreignArch(), 1), ""), desc(s.image("linux", runtime.GOARCH, 4), ""))
		cfg, err := resolveImageConfig(ctx, s.fetch, idx, pm)
		if err != nil || retriesOf(t, cfg) != 4 {
			t.Fatalf("config %s, %v", cfg, err)
		}
		// An entry with a matching platform is preferred to one without.
		idx = s.index(mediaTypeOCIIndex, desc(s.image("linux", runtime.GOARCH, 5), ""), desc(s.image("linux", runtime.GOARCH, 6), local))
		if cfg, err := resolveImageConfig(ctx, s.fetch, idx, pm); err != nil || retriesOf(t, cfg) != 6 {
			t.Fatalf("config %s, %v", cfg, err)
		}
	})

	t.Run("nested index", func(t *testing.T) {
		var s blobStore
		inner := s.index(mediaTypeOCIIndex, desc(s.image("linux", runtime.GOARCH, 7), local))
		outer := s.index(mediaTypeOCIIndex, desc(inner, ""))
		if cfg, err := resolveImageConfig(ctx, s.fetch, outer, pm); err != nil || retriesOf(t, cfg) != 7 {
			t.Fatalf("config %s, %v", cfg, err)
		}
		deep := inner
		for range maxIndexDepth {
			deep = s.index(mediaTypeOCIIndex, desc(deep, ""))
		}
		if _, err := resolveImageConfig(ctx, s.fetch, deep, pm); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "nested") {
			t.Errorf("indexes nested %d deep: %v, want ErrInvalid", maxIndexDepth+1, err)
		}
	})

	t.Run("no manifest for the platform", func(t *testing.T) {
		var s blobStore
		idx := s.index(mediaTypeOCIIndex, desc(s.image("linux", foreignArch(), 1), foreign), desc(s.image("windows", runtime.GOARCH, 1), "windows/"+runtime.GOARCH))
		_, err := resolveImageConfig(ctx, s.fetch, idx, pm)
		if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "no manifest for platform") {
			t.Errorf("err = %v, want ErrNotFound (no manifest for platform)", err)
		}
		if len(s.reads) != 1 {
			t.Errorf("read %d blobs, want only the index", len(s.reads))
		}
	})

	t.Run("bounded candidates", func(t *testing.T) {
		var s blobStore
		var entries []map[string]any
		for i := range 50 {
			entries = append(entries, desc(blobDesc{mediaType: mediaTypeOCIManifest, digest: fmt.Sprintf("sha256:%064x", i), size: 100}, local))
		}
		_, err := resolveImageConfig(ctx, s.fetch, s.index(mediaTypeOCIIndex, entries...), pm)
		if status.Code(err) != codes.NotFound {
			t.Errorf("err = %v, want the first candidate's NotFound", err)
		}
		if len(s.reads) != 1+maxIndexCandidates {
			t.Errorf("read %d blobs for an index of 50 missing manifests, want %d", len(s.reads), 1+maxIndexCandidates)
		}
	})

	t.Run("a failing read is not skipped", func(t *testing.T) {
		var s blobStore
		idx := s.index(mediaTypeOCIIndex, desc(s.image("linux", runtime.GOARCH, 1), local), desc(s.image("linux", runtime.GOARCH, 2), local))
		boom := fmt.Errorf("content read: %w", errdefs.ErrUnavailable)
		fetch := func(ctx context.Context, d blobDesc) ([]byte, error) {
			if d.digest != idx.digest {
				return nil, boom
			}
			return s.fetch(ctx, d)
		}
		if _, err := resolveImageConfig(ctx, fetch, idx, pm); !errors.Is(err, boom) {
			t.Errorf("err = %v, want the read error", err)
		}
	})

	t.Run("malformed documents", func(t *testing.T) {
		var s blobStore
		m := s.image("linux", runtime.GOARCH, 1)
		for name, target := range map[string]blobDesc{
			"manifest posing as an index": {mediaType: mediaTypeOCIIndex, digest: m.digest, size: m.size},
			"index posing as a manifest":  s.index(mediaTypeOCIIndex, desc(m, local)),
			"not JSON":                    s.put(mediaTypeOCIManifest, []byte("{not json")),
			"manifest without config":     s.put(mediaTypeOCIManifest, map[string]any{"schemaVersion": 2, "layers": []any{}}),
			"a config as target":          {mediaType: "application/vnd.oci.image.config.v1+json", digest: m.digest, size: m.size},
		} {
			if name == "index posing as a manifest" {
				target.mediaType = mediaTypeOCIManifest
			}
			if _, err := resolveImageConfig(ctx, s.fetch, target, pm); !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("%s: err = %v, want ErrInvalid", name, err)
			}
		}
	})

	t.Run("arm variant", func(t *testing.T) {
		// arm64 nodes run arm64 first, then 32-bit arm: the index order
		// does not matter.
		arm64 := platforms.Only(platforms.MustParse("linux/arm64/v8"))
		var s blobStore
		idx := s.index(mediaTypeOCIIndex, desc(s.image("linux", "arm", 1), "linux/arm/v7"), desc(s.image("linux", "arm64", 2), "linux/arm64/v8"))
		if cfg, err := resolveImageConfig(ctx, s.fetch, idx, arm64); err != nil || retriesOf(t, cfg) != 2 {
			t.Fatalf("config %s, %v", cfg, err)
		}
		idx = s.index(mediaTypeOCIIndex, desc(s.image("linux", "amd64", 1), "linux/amd64"), desc(s.image("linux", "arm", 3), "linux/arm/v7"))
		if cfg, err := resolveImageConfig(ctx, s.fetch, idx, arm64); err != nil || retriesOf(t, cfg) != 3 {
			t.Fatalf("config %s, %v", cfg, err)
		}
	})
}

func TestParseDigest(t *testing.T) {
	good := "sha256:" + strings.Repeat("ab", 32)
	if _, err := parseDigest(good); err != nil {
		t.Errorf("%s: %v", good, err)
	}
	for _, ok := range []string{"sha384:" + strings.Repeat("0", 96), "sha512:" + strings.Repeat("0", 128)} {
		if _, err := parseDigest(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "sha256", "sha256:", "sha256:abc", "md5:" + strings.Repeat("0", 32),
		"sha256:" + strings.Repeat("AB", 32), "sha256:" + strings.Repeat("zz", 32), "sha256:../../" + strings.Repeat("0", 58)} {
		if _, err := parseDigest(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("parseDigest(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}
