package deploy

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/vigilhq/vigil/internal/testenv"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// replicaFlags are the aggregator's flags of a replica (issue 27).
var replicaFlags = []string{"replica-id", "lease-ttl", "advertise-api", "peer-server-name"}

// renderReplicas renders deploy/replicas with kubectl's kustomize and
// decodes every object strictly (unknown, misspelt or duplicate fields
// fail), checking the namespace and the part-of label on each.
func renderReplicas(t *testing.T) []any {
	t.Helper()
	kubectl := testenv.LookPath(t, "kubectl")
	out := runTool(t, repoRoot(t), kubectl, "kustomize", "deploy/replicas")
	var objs []any
	for i, doc := range splitYAML([]byte(out)) {
		obj, err := decodeStrict(doc)
		if err != nil {
			t.Fatalf("deploy/replicas rendered object %d: %v", i+1, err)
		}
		var meta struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
			Kind     string            `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		if meta.Kind != "Namespace" && meta.Metadata.Namespace != "vigil-system" {
			t.Errorf("%s %s rendered in namespace %q", meta.Kind, meta.Metadata.Name, meta.Metadata.Namespace)
		}
		if meta.Metadata.Labels["app.kubernetes.io/part-of"] != "vigil" {
			t.Errorf("%s %s lacks the part-of label", meta.Kind, meta.Metadata.Name)
		}
		objs = append(objs, obj)
	}
	return objs
}

// TestReplicasOverlay renders deploy/replicas and checks what running
// several aggregator replicas on etcd depends on: the StatefulSet replaced
// by a Deployment of several replicas spread over nodes, a
// PodDisruptionBudget that keeps all but one, the etcd flags with the
// client certificate Secret mounted, no volume claim, the agents resolving
// every replica, the replicas allowed to call each other, and every replica
// scraped.
func TestReplicasOverlay(t *testing.T) {
	objs := renderReplicas(t)
	var (
		dep      *appsv1.Deployment
		agent    *appsv1.DaemonSet
		pdb      *policyv1.PodDisruptionBudget
		np       *networkingv1.NetworkPolicy
		sm       *monv1.ServiceMonitor
		services = map[string]*corev1.Service{}
	)
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.StatefulSet:
			t.Errorf("StatefulSet %s is still rendered: the Deployment replaces it", o.Name)
		case *appsv1.Deployment:
			if dep != nil {
				t.Errorf("two Deployments: %s and %s", dep.Name, o.Name)
			}
			dep = o
		case *appsv1.DaemonSet:
			agent = o
		case *policyv1.PodDisruptionBudget:
			pdb = o
		case *networkingv1.NetworkPolicy:
			np = o
		case *monv1.ServiceMonitor:
			sm = o
		case *corev1.Service:
			services[o.Name] = o
		}
	}
	if dep == nil || agent == nil || pdb == nil || np == nil || sm == nil {
		t.Fatalf("deploy/replicas lacks an object: deployment %v, agent %v, pdb %v, network policy %v, service monitor %v",
			dep != nil, agent != nil, pdb != nil, np != nil, sm != nil)
	}
	podLabels := labels.Set(dep.Spec.Template.Labels)
	selects := func(sel *metav1.LabelSelector) bool {
		s, err := metav1.LabelSelectorAsSelector(sel)
		return err == nil && !s.Empty() && s.Matches(podLabels)
	}

	// The Deployment.
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Fatalf("aggregator replicas %v: want several", dep.Spec.Replicas)
	}
	replicas := int(*dep.Spec.Replicas)
	if !selects(dep.Spec.Selector) {
		t.Error("the Deployment's selector does not select its own pods")
	}
	ps := dep.Spec.Template.Spec
	if len(ps.Containers) != 1 {
		t.Fatalf("aggregator pod has %d containers", len(ps.Containers))
	}
	c := ps.Containers[0]
	checkArgs(t, "cmd/aggregator", c)
	for _, f := range append([]string{"etcd-endpoints", "etcd-prefix", "etcd-ca", "etcd-cert", "etcd-key"}, replicaFlags...) {
		if argValue(c.Args, f) == "" {
			t.Errorf("aggregator has no --%s", f)
		}
	}
	for _, ep := range strings.Split(argValue(c.Args, "etcd-endpoints"), ",") {
		if !strings.HasPrefix(ep, "https://") {
			t.Errorf("etcd endpoint %q: want https (the client certificate is sent over TLS)", ep)
		}
	}
	// The etcd client certificate: all three files from one Secret.
	etcdVolume := ""
	for _, f := range []string{"etcd-ca", "etcd-cert", "etcd-key"} {
		v := volumeUnder(c, argValue(c.Args, f))
		if v == "" {
			t.Errorf("aggregator --%s=%s is not under a mounted volume", f, argValue(c.Args, f))
			continue
		}
		if etcdVolume != "" && v != etcdVolume {
			t.Errorf("--%s is on volume %s, the other etcd files on %s", f, v, etcdVolume)
		}
		etcdVolume = v
	}
	if s := secretOf(ps, etcdVolume); s != "vigil-etcd-client" {
		t.Errorf("the etcd client files are on volume %q from secret %q, want Secret vigil-etcd-client", etcdVolume, s)
	}
	for _, f := range []string{"tls-cert", "tls-key", "tls-ca", "ca-cert", "ca-key", "bootstrap-tokens-file", "api-tokens-file", "rules-file", "data-dir"} {
		if !underAMount(c, argValue(c.Args, f)+"/x") {
			t.Errorf("aggregator --%s=%q is not under a mounted volume", f, argValue(c.Args, f))
		}
	}
	// The replica's identity and address come from the pod (the $(VAR)
	// reference must name an env var the container defines, or Kubernetes
	// passes it through literally).
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
	}
	for _, a := range c.Args {
		for _, m := range envRef.FindAllStringSubmatch(a, -1) {
			if !env[m[1]] {
				t.Errorf("argument %q names $(%s), which the container does not define", a, m[1])
			}
		}
	}
	checkMounts(t, "aggregator", ps)
	for _, v := range ps.Volumes {
		if v.PersistentVolumeClaim != nil || v.HostPath != nil {
			t.Errorf("volume %s keeps state outside etcd: replicas must not", v.Name)
		}
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("aggregator pod mounts a service account token: it needs no Kubernetes API")
	}
	if ps.SecurityContext == nil || ps.SecurityContext.RunAsNonRoot == nil || !*ps.SecurityContext.RunAsNonRoot {
		t.Error("aggregator does not run as non-root")
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("aggregator's root filesystem is writable or it may escalate privileges")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("aggregator has no /readyz readiness probe: a starting replica would be given agents")
	}
	req, lim := c.Resources.Requests.Memory(), c.Resources.Limits.Memory()
	if c.Resources.Requests.Cpu().IsZero() || req.IsZero() || lim.IsZero() || lim.Cmp(*req) < 0 {
		t.Errorf("aggregator resources %+v: want CPU and memory requests and a memory limit above the request", c.Resources)
	}

	// Spread: never two replicas on one node, and a rolling update that
	// needs no extra node.
	aa := ps.Affinity
	var spread bool
	if aa != nil && aa.PodAntiAffinity != nil {
		for _, term := range aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
			if term.TopologyKey == "kubernetes.io/hostname" && selects(term.LabelSelector) {
				spread = true
			}
		}
	}
	if !spread {
		t.Error("no required pod anti-affinity on kubernetes.io/hostname selecting the replicas")
	}
	ru := dep.Spec.Strategy.RollingUpdate
	if dep.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 {
		t.Error("with one replica per node, the rolling update must not surge (maxSurge 0): the extra pod would find no node")
	}

	// The disruption budget keeps all but one replica.
	if !selects(pdb.Spec.Selector) {
		t.Error("the PodDisruptionBudget does not select the replicas")
	}
	switch {
	case pdb.Spec.MaxUnavailable != nil:
		if n := pdb.Spec.MaxUnavailable.IntValue(); n < 1 || n >= replicas {
			t.Errorf("PodDisruptionBudget maxUnavailable %d of %d replicas", n, replicas)
		}
	case pdb.Spec.MinAvailable != nil:
		if n := pdb.Spec.MinAvailable.IntValue(); n < 1 || n >= replicas {
			t.Errorf("PodDisruptionBudget minAvailable %d of %d replicas", n, replicas)
		}
	default:
		t.Error("PodDisruptionBudget sets neither maxUnavailable nor minAvailable")
	}

	// The agents resolve a headless Service of the ready replicas.
	var target string
	for _, a := range agent.Spec.Template.Spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--aggregator="); ok {
			target = v
		}
	}
	host, ok := strings.CutPrefix(target, "dns:///")
	svcName, _, _ := strings.Cut(host, ".")
	svc := services[svcName]
	switch {
	case !ok:
		t.Errorf("agent --aggregator=%q: want dns:/// of the replicas' headless Service (each agent knows every replica)", target)
	case svc == nil:
		t.Errorf("agent --aggregator=%q names no Service of the overlay", target)
	case svc.Spec.ClusterIP != corev1.ClusterIPNone || svc.Spec.PublishNotReadyAddresses:
		t.Errorf("Service %s must be headless and list ready replicas only", svcName)
	case !selects(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}):
		t.Errorf("Service %s does not select the replicas", svcName)
	case !strings.HasSuffix(host, fmt.Sprintf(":%d", svc.Spec.Ports[0].Port)) || svc.Spec.Ports[0].TargetPort.String() != "grpc":
		t.Errorf("agent --aggregator=%q is not the gRPC port of Service %s", target, svcName)
	}
	if v := argValue(agent.Spec.Template.Spec.Containers[0].Args, "tls-server-name"); v == "" {
		t.Error("the agents dial the replicas by address: they need --tls-server-name for the replicas' certificate")
	}

	// The replicas may call each other's API on the gRPC port.
	var peers bool
	for _, r := range np.Spec.Ingress {
		grpc := false
		for _, p := range r.Ports {
			grpc = grpc || p.Port.String() == "grpc"
		}
		for _, p := range r.From {
			if grpc && p.PodSelector != nil && p.NamespaceSelector == nil && selects(p.PodSelector) {
				peers = true
			}
		}
	}
	if !peers {
		t.Error("the NetworkPolicy does not let the replicas reach each other's gRPC port (the whole-fleet API fans out)")
	}

	// Prometheus scrapes every replica: the ServiceMonitor's Service
	// selects them all and is not the headless one without the http port.
	base := services["vigil-aggregator"]
	if base == nil || !selects(&metav1.LabelSelector{MatchLabels: base.Spec.Selector}) {
		t.Fatal("Service vigil-aggregator does not select the replicas")
	}
	var smPort bool
	for _, p := range base.Spec.Ports {
		smPort = smPort || p.Name == sm.Spec.Endpoints[0].Port
	}
	if !smPort || !labels.SelectorFromSet(sm.Spec.Selector.MatchLabels).Matches(labels.Set(base.Labels)) {
		t.Error("the ServiceMonitor does not scrape the replicas' http port through Service vigil-aggregator")
	}
}

// envRef is a $(VAR) reference in a container's arguments.
var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// volumeUnder is the volume mounted above path in c, or "".
func volumeUnder(c corev1.Container, path string) string {
	for _, m := range c.VolumeMounts {
		if path != "" && strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") {
			return m.Name
		}
	}
	return ""
}

// secretOf is the Secret behind a pod's volume, or "".
func secretOf(ps corev1.PodSpec, volume string) string {
	for _, v := range ps.Volumes {
		if v.Name == volume && v.Secret != nil {
			return v.Secret.SecretName
		}
	}
	return ""
}
