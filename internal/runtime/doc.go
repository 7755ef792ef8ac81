// Package runtime is the agent's view of containerd: the inventory of containers
// across namespaces, lifecycle events from containerd's event stream, resource
// usage read straight from the cgroup filesystem, the image's Docker healthcheck,
// and task control (exec, restart, stop, kill). containerd's own types never
// leave the package; errors are wrapped around internal/errdefs sentinels.
package runtime
