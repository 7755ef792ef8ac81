// Package ociimage writes container images as OCI image layout tarballs,
// reproducibly and without a registry or a container engine: the same
// files give the same bytes, hence the same digests, on every build.
//
// A Layer is built from files in memory (LayerBuilder): entries are sorted
// by name, every parent directory is made, and every timestamp, owner and
// format field is fixed. An Image is layers plus a run configuration, and
// WriteLayout renders it as a tar holding `oci-layout`, `index.json` and
// `blobs/sha256/...`, which `ctr images import`, containerd's Go client
// Import, `skopeo copy oci-archive:` and `podman load` accept.
//
// cmd/vigil-image builds Vigil's release images with it (`make image`).
package ociimage
