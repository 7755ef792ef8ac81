package container

import "strings"

// Key is the (namespace, id) pair that names a container on a node. It is
// comparable (a map key) and small; the zero Key names no container.
//
// Neither part can hold a "/": containerd restricts namespaces and
// container ids to letters, digits and ".", "_", "-" separators, so
// String's "namespace/id" is unambiguous.
type Key struct {
	// Namespace is the containerd namespace ("k8s.io", "moby", "default").
	Namespace string
	// ID is the container's id, unique within its namespace.
	ID string
}

// String returns "namespace/id", the spelling of logs, errors and the
// agent's state dir. It allocates: compare and map Keys, not their strings,
// on paths that run per sample.
func (k Key) String() string { return k.Namespace + "/" + k.ID }

// Compare orders keys by namespace, then id: -1, 0 or +1, as
// strings.Compare (for slices.SortFunc).
func Compare(a, b Key) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}
