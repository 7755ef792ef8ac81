package runtime

import (
	"context"
	"errors"
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Fuzz targets for every parser of outside input: cgroup files (kernel),
// cgroupsPath and OCI spec, CRI metadata and labels (whoever created the
// container), image config, index and manifest (whoever built the image),
// /proc/PID/stat.
// Seeds live in testdata/fuzz/<Target>/.

func FuzzCgroupFiles(f *testing.F) {
	f.Add([]byte("nr_periods 20\nnr_throttled 17\nthrottled_time 813493379\n"))
	f.Add([]byte("8:0 Read 4096\n8:0 Write 5\nTotal 4101\n"))
	f.Add([]byte("253:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n"))
	f.Add([]byte("max\n"))
	f.Add([]byte("50000 100000\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Oracle: strconv on the same bytes (decimal digits only, no
		// sign, overflow refused) after the files' whitespace trim.
		want, err := strconv.ParseUint(string(trimSpace(b)), 10, 64)
		if err != nil {
			want = 0
		}
		if v := parseValue(b); v != want {
			t.Fatalf("parseValue(%q) = %d, want %d", b, v, want)
		}
		if want >= unlimited {
			want = 0
		}
		if v := parseLimit(b); v != want {
			t.Fatalf("parseLimit(%q) = %d, want %d", b, v, want)
		}
		parseCPUStat(b)
		parseCPUAcctStat(b)
		ms1, ms2 := parseMemoryStatV1(b), parseMemoryStatV2(b)
		parseOOMKill(b)
		parseMemoryEventsV2(b)
		if q, _ := parseCPUMax(b); q >= unlimited {
			t.Fatalf("parseCPUMax(%q) quota %d: not a limit", b, q)
		}
		if sh := weightToShares(parseValue(b)); sh > 262144 {
			t.Fatalf("weightToShares of %q = %d, above the v1 maximum", b, sh)
		}
		parseBlkioV1(b)
		parseIOStatV2(b)
		for _, ms := range []memoryStat{ms1, ms2} {
			// usage minus inactive_file, clamped at 0 (no wrap-around).
			ws := workingSet(ms.RSS, ms.InactiveFile)
			if ms.InactiveFile >= ms.RSS && ws != 0 || ms.InactiveFile < ms.RSS && ws+ms.InactiveFile != ms.RSS {
				t.Fatalf("workingSet(%d, %d) = %d", ms.RSS, ms.InactiveFile, ws)
			}
		}
	})
}

func FuzzResolveCgroupsPath(f *testing.F) {
	for _, s := range []string{"/default/web", "system.slice:cri-containerd:abc", "kubepods-burstable-pod1.slice:cri-containerd:x", "-.slice::y", "a/../b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, err := resolveCgroupsPath(p)
		if err != nil {
			return
		}
		if !strings.HasPrefix(got, "/") || got == "/" || path.Clean(got) != got || strings.Contains(got+"/", "/../") {
			t.Fatalf("resolveCgroupsPath(%q) = %q: not a clean path below the root", p, got)
		}
	})
}

func FuzzParseSpecAndMetadata(f *testing.F) {
	f.Add([]byte(`{"annotations":{"io.kubernetes.cri.sandbox-id":"s"},"linux":{"cgroupsPath":"/k8s.io/x","namespaces":[{"type":"network"}]}}`))
	f.Add([]byte(`{"Version":"v1","Metadata":{"SandboxID":"s","Config":{"metadata":{"name":"c","attempt":1},"annotations":{"io.kubernetes.container.restartCount":"1"}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		spec, _, err := parseSpec(b)
		var annotations map[string]string
		if err == nil {
			annotations = spec.Annotations
			if cp := spec.cgroupsPath(); cp != "" {
				_, _ = resolveCgroupsPath(cp)
			}
		}
		var meta *criMetadata
		if m, err := parseCRIMetadata(b); err == nil {
			meta = &m
		}
		labels := map[string]string{labelCRIKind: string(b)}
		if p := podOf(labels, annotations, meta); p != nil && p.Sandbox && p.ContainerName != "" {
			t.Fatalf("a sandbox with a container name: %+v", p)
		}
	})
}

func FuzzParseHealthcheck(f *testing.F) {
	f.Add([]byte(`{"config":{"Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":1000000000,"Retries":3}}}`))
	f.Add([]byte(`{"config":{"Healthcheck":{"Test":["NONE"]}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHealthcheck(b)
		if err != nil || h == nil {
			return
		}
		if len(h.Test) == 0 || h.Interval < 0 || h.Timeout < 0 || h.StartPeriod < 0 || h.Retries < 0 {
			t.Fatalf("accepted an invalid healthcheck: %+v", h)
		}
	})
}

// FuzzResolveImageConfig feeds the image-config resolution hostile index,
// manifest and config documents (whoever built or pushed the image). The
// first document is the image's target (an index when isIndex); every
// other digest it names is served the second document, so nested indexes
// and manifests are fuzzed too. The fetcher never fails, so every error
// must come from the documents and say so: ErrInvalid, or ErrNotFound for
// an index with nothing for this platform.
func FuzzResolveImageConfig(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzResolveImageConfig (an index, a manifest, a
	// nested index, documents that contradict their descriptor).
	f.Fuzz(func(t *testing.T, isIndex bool, target, child []byte) {
		const targetDigest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
		mt := mediaTypeOCIManifest
		if isIndex {
			mt = mediaTypeOCIIndex
		}
		fetches := 0
		fetch := func(_ context.Context, d blobDesc) ([]byte, error) {
			fetches++
			if fetches > 64 {
				t.Fatalf("more than 64 fetches for one image: the depth and candidate limits do not hold")
			}
			if d.digest == targetDigest {
				return target, nil
			}
			return child, nil
		}
		_, err := resolveImageConfig(context.Background(), fetch, blobDesc{mediaType: mt, digest: targetDigest}, imagePlatform())
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("resolve: %v: not ErrInvalid or ErrNotFound", err)
		}
	})
}
