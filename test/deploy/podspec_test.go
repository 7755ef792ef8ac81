package deploy

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func boolPtr(b bool) *bool { return &b }

// TestTranslate checks the pure part of the translation on a small pod
// spec: capabilities (defaults minus drop plus add), mounts ordered parents
// first with same-path host mounts mapped, args rewritten and $(VAR)
// expanded; and that what it does not know is refused.
func TestTranslate(t *testing.T) {
	dir := t.TempDir()
	ps := corev1.PodSpec{
		HostPID: true,
		Containers: []corev1.Container{{
			Name: "agent",
			Args: []string{"--state-dir=/var/lib/x", "--node=$(NODE)", "--other=/etc/unmapped"},
			Env:  []corev1.EnvVar{{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
			SecurityContext: &corev1.SecurityContext{
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW", "MKNOD"}, Add: []corev1.Capability{"SYS_PTRACE"}},
			},
			VolumeMounts: []corev1.VolumeMount{
				{Name: "state", MountPath: "/var/lib/x"},
				{Name: "tmp", MountPath: "/var"},
				{Name: "cfg", MountPath: "/etc/cfg", ReadOnly: false},
			},
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}},
		}},
		Volumes: []corev1.Volume{
			{Name: "state", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/x"}}},
			{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
			{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}},
		},
	}
	tr, err := Translate(ps, "agent", Host{Paths: map[string]string{"/var/lib/x": dir}, Volumes: map[string]string{"cfg": dir}, NodeName: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	caps := map[string]bool{}
	for _, c := range tr.Capabilities {
		caps[c] = true
	}
	if caps["CAP_NET_RAW"] || caps["CAP_MKNOD"] || !caps["CAP_SYS_PTRACE"] || !caps["CAP_CHOWN"] || len(caps) != len(defaultCapabilities)-1 {
		t.Errorf("capabilities %v: want the defaults without NET_RAW and MKNOD, with SYS_PTRACE", tr.Capabilities)
	}
	var dests []string
	for _, m := range tr.Mounts {
		dests = append(dests, m.Destination+" "+strings.Join(m.Options, ","))
	}
	want := []string{"/var nosuid,nodev,mode=1777,rw", "/etc/cfg rbind,ro", dir + " rbind,rw"}
	if strings.Join(dests, "|") != strings.Join(want, "|") {
		t.Errorf("mounts %q, want %q (parents first; the hostPath at its mapped path; config maps read-only)", dests, want)
	}
	if got := strings.Join(tr.Args, " "); got != "--state-dir="+dir+" --node=n1 --other=/etc/unmapped" {
		t.Errorf("args %q", got)
	}

	for name, mutate := range map[string]func(*corev1.PodSpec){
		"privileged": func(p *corev1.PodSpec) { p.Containers[0].SecurityContext.Privileged = boolPtr(true) },
		"command":    func(p *corev1.PodSpec) { p.Containers[0].Command = []string{"/bin/sh"} },
		"subPath":    func(p *corev1.PodSpec) { p.Containers[0].VolumeMounts[0].SubPath = "a" },
		"no volume":  func(p *corev1.PodSpec) { p.Volumes = p.Volumes[1:] },
		"pvc": func(p *corev1.PodSpec) {
			p.Volumes[2].ConfigMap, p.Volumes[2].PersistentVolumeClaim = nil, &corev1.PersistentVolumeClaimVolumeSource{}
		},
		"env secret": func(p *corev1.PodSpec) {
			p.Containers[0].Env[0].ValueFrom = &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{}}
		},
		"no stand-in": func(p *corev1.PodSpec) { p.Containers[0].VolumeMounts[2].Name = "cfg2"; p.Volumes[2].Name = "cfg2" },
	} {
		p := *ps.DeepCopy()
		mutate(&p)
		if _, err := Translate(p, "agent", Host{Paths: map[string]string{"/var/lib/x": dir}, Volumes: map[string]string{"cfg": dir}}); err == nil {
			t.Errorf("%s: translated; want it refused", name)
		}
	}
}
