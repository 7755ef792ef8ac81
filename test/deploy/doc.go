// Package deploy runs Vigil as it is deployed: the agent's release image
// (cmd/vigil-image), started as a container on a real containerd with the
// host namespaces, mounts, capabilities and security context of the
// shipped DaemonSet (deploy/daemonset/agent.yaml), read from the manifest
// and translated into an OCI spec as the kubelet and containerd's CRI
// plugin would. Its tests check from outside that the agent does its job
// under exactly that privilege.
package deploy
