package deploy

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/vigilhq/vigil/internal/testenv"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite generated files (deploy/daemonset/prometheusrule.yaml) instead of comparing")

// manifests is one file's objects, each decoded strictly into its type.
type manifests struct {
	objects []any
}

// splitYAML splits a multi-document YAML file; empty documents (comments
// only) are dropped.
func splitYAML(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// decodeStrict decodes one object into the Go type of its kind, failing on
// any field the type does not have (a misspelt or misplaced field would
// otherwise be dropped by the API server without a word).
func decodeStrict(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj any
	switch tm.APIVersion + "/" + tm.Kind {
	case "v1/Namespace":
		obj = &corev1.Namespace{}
	case "v1/ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "v1/Service":
		obj = &corev1.Service{}
	case "v1/ConfigMap":
		obj = &corev1.ConfigMap{}
	case "apps/v1/DaemonSet":
		obj = &appsv1.DaemonSet{}
	case "apps/v1/StatefulSet":
		obj = &appsv1.StatefulSet{}
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	case "policy/v1/PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "networking.k8s.io/v1/NetworkPolicy":
		obj = &networkingv1.NetworkPolicy{}
	case "monitoring.coreos.com/v1/ServiceMonitor":
		obj = &monv1.ServiceMonitor{}
	case "monitoring.coreos.com/v1/PrometheusRule":
		obj = &monv1.PrometheusRule{}
	default:
		return nil, fmt.Errorf("kind %s/%s: the test knows no type for it (add one)", tm.APIVersion, tm.Kind)
	}
	if err := unmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return obj, nil
}

// unmarshalStrict decodes YAML as the API server's strict field validation
// does: field names match case-sensitively (encoding/json, under
// sigs.k8s.io/yaml, would take hostPid for hostPID), and unknown or
// duplicate fields are errors.
func unmarshalStrict(doc []byte, obj any) error {
	if err := yaml.UnmarshalStrict(doc, new(any)); err != nil {
		return err // duplicate keys, malformed YAML
	}
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// kustomizeResources are the files deploy/daemonset/kustomization.yaml lists.
func kustomizeResources(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/daemonset/kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	return k.Resources
}

// loadBase decodes every object of every file of the kustomize base.
func loadBase(t *testing.T) []any {
	t.Helper()
	var objs []any
	for _, f := range kustomizeResources(t) {
		b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/daemonset", f))
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitYAML(b) {
			obj, err := decodeStrict(doc)
			if err != nil {
				t.Fatalf("deploy/daemonset/%s, document %d: %v", f, i+1, err)
			}
			objs = append(objs, obj)
		}
	}
	return objs
}

// LoadAgentDaemonSet returns the agent's DaemonSet as the base declares it.
func loadAgentDaemonSet(t *testing.T) *appsv1.DaemonSet {
	for _, o := range loadBase(t) {
		if ds, ok := o.(*appsv1.DaemonSet); ok && ds.Name == "vigil-agent" {
			return ds
		}
	}
	t.Fatal("no vigil-agent DaemonSet in deploy/daemonset")
	return nil
}

// flagNames returns the flags a command defines, read from the non-test Go
// files of its directory (fs.XxxVar(&v, "name", ...) and fs.Xxx("name", ...)).
func flagNames(t *testing.T, cmdDir string) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), cmdDir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`fs\.[A-Za-z]+\((?:[^,()]*,\s*)?"([a-z0-9-]+)"`).FindAllStringSubmatch(string(b), -1) {
			names[m[1]] = true
		}
	}
	return names
}

func checkArgs(t *testing.T, cmdDir string, c corev1.Container) {
	t.Helper()
	defined := flagNames(t, cmdDir)
	if len(defined) < 5 {
		t.Fatalf("found only %d flags in %s: the pattern no longer matches its source", len(defined), cmdDir)
	}
	for _, a := range c.Args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case !strings.HasPrefix(a, "--"):
			t.Errorf("%s: argument %q is not a --flag=value", c.Name, a)
		case defined[name]:
		default:
			t.Errorf("%s: --%s is not a flag of %s", c.Name, name, cmdDir)
		}
	}
}

// argValue returns the value of --name in args.
func argValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// TestManifestsStrict decodes every manifest of the base into the
// Kubernetes API types (the Prometheus Operator's for ServiceMonitor and
// PrometheusRule), with unknown fields refused, and checks what the
// deployment depends on.
func TestManifestsStrict(t *testing.T) {
	objs := loadBase(t)
	kinds := map[string]int{}
	var agent *appsv1.DaemonSet
	var agg *appsv1.StatefulSet
	services := map[string]*corev1.Service{}
	accounts := map[string]*corev1.ServiceAccount{}
	var np *networkingv1.NetworkPolicy
	var sm *monv1.ServiceMonitor
	for _, o := range objs {
		kinds[fmt.Sprintf("%T", o)]++
		switch o := o.(type) {
		case *appsv1.DaemonSet:
			agent = o
		case *appsv1.StatefulSet:
			agg = o
		case *corev1.Service:
			services[o.Name] = o
		case *corev1.ServiceAccount:
			accounts[o.Name] = o
		case *networkingv1.NetworkPolicy:
			np = o
		case *monv1.ServiceMonitor:
			sm = o
		}
	}
	if agent == nil || agg == nil || np == nil || sm == nil || services["vigil-aggregator"] == nil || services["vigil-agent-gossip"] == nil {
		t.Fatalf("the base lacks an object: %v", kinds)
	}

	// The agent.
	ps := agent.Spec.Template.Spec
	if len(ps.Containers) != 1 {
		t.Fatalf("agent pod has %d containers", len(ps.Containers))
	}
	c := ps.Containers[0]
	checkArgs(t, "cmd/agent", c)
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("agent pod mounts a service account token: it needs no Kubernetes API")
	}
	if sa := accounts[ps.ServiceAccountName]; sa == nil || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Errorf("agent service account %q missing or mounting its token", ps.ServiceAccountName)
	}
	if !ps.HostPID || !ps.HostNetwork {
		t.Error("agent pod needs hostPID and hostNetwork")
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("agent has no security context")
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("agent is privileged")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("agent's root filesystem is writable")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("agent allows privilege escalation")
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL":
		t.Error("agent does not drop ALL capabilities")
	}
	if ps.SecurityContext == nil || ps.SecurityContext.SeccompProfile == nil || ps.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("agent pod has no RuntimeDefault seccomp profile")
	}
	metricsListen := argValue(c.Args, "metrics-listen")
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Host+":"+p.HTTPGet.Port.String() != metricsListen {
			t.Errorf("agent %s probe %+v: want /healthz on --metrics-listen %s", name, p, metricsListen)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("agent resources %+v: want CPU and memory requests and a memory limit", c.Resources)
	}
	if len(ps.Tolerations) == 0 || agent.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Error("agent needs tolerations and a rolling update")
	}
	if ps.TerminationGracePeriodSeconds == nil || *ps.TerminationGracePeriodSeconds <= 15 {
		t.Error("agent's termination grace must exceed its --shutdown-grace (15s)")
	}
	checkMounts(t, "agent", ps)
	if mountOf(c, "state") != argValue(c.Args, "state-dir") || hostPathOf(ps, "state") != argValue(c.Args, "state-dir") {
		t.Errorf("agent state dir %s must be a hostPath mounted at the same path (log paths under it are handed to the host's shims)", argValue(c.Args, "state-dir"))
	}
	for _, f := range []string{"tls-ca", "bootstrap-token-file"} {
		if !underAMount(c, argValue(c.Args, f)) {
			t.Errorf("agent --%s=%s is not under a mounted volume", f, argValue(c.Args, f))
		}
	}
	if !underAMount(c, argValue(c.Args, "containerd")) {
		t.Errorf("agent --containerd is not under a mounted volume")
	}
	if s := services["vigil-agent-gossip"]; s.Spec.ClusterIP != corev1.ClusterIPNone || !s.Spec.PublishNotReadyAddresses {
		t.Error("gossip seeds must be a headless service publishing not-ready addresses")
	}

	// The aggregator.
	aps := agg.Spec.Template.Spec
	ac := aps.Containers[0]
	checkArgs(t, "cmd/aggregator", ac)
	if aps.AutomountServiceAccountToken == nil || *aps.AutomountServiceAccountToken {
		t.Error("aggregator pod mounts a service account token: it needs no Kubernetes API")
	}
	if aps.SecurityContext == nil || aps.SecurityContext.RunAsNonRoot == nil || !*aps.SecurityContext.RunAsNonRoot {
		t.Error("aggregator does not run as non-root")
	}
	if ac.SecurityContext == nil || ac.SecurityContext.ReadOnlyRootFilesystem == nil || !*ac.SecurityContext.ReadOnlyRootFilesystem {
		t.Error("aggregator's root filesystem is writable")
	}
	var claim bool
	var claims []string
	for _, vc := range agg.Spec.VolumeClaimTemplates {
		claims = append(claims, vc.Name)
		if mountOf(ac, vc.Name) == argValue(ac.Args, "data-dir") {
			claim = true
		}
	}
	checkMounts(t, "aggregator", aps, claims...)
	if !claim {
		t.Errorf("aggregator --data-dir=%s is not on a volume claim", argValue(ac.Args, "data-dir"))
	}
	for _, f := range []string{"tls-cert", "tls-key", "tls-ca", "ca-cert", "ca-key", "bootstrap-tokens-file", "api-tokens-file", "rules-file"} {
		if !underAMount(ac, argValue(ac.Args, f)) {
			t.Errorf("aggregator --%s=%q is not under a mounted volume", f, argValue(ac.Args, f))
		}
	}
	svc := services["vigil-aggregator"]
	if !reflect.DeepEqual(svc.Spec.Selector, agg.Spec.Template.Labels) && svc.Spec.Selector["app.kubernetes.io/name"] != "vigil-aggregator" {
		t.Error("the aggregator's service does not select its pods")
	}
	var smPort bool
	for _, p := range svc.Spec.Ports {
		if p.Name == sm.Spec.Endpoints[0].Port {
			smPort = true
		}
	}
	if !smPort || sm.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != "vigil-aggregator" {
		t.Error("the ServiceMonitor does not scrape the aggregator's http port")
	}

	// The network policy lets in the four callers on the two ports, no more.
	if np.Spec.PodSelector.MatchLabels["app.kubernetes.io/name"] != "vigil-aggregator" || len(np.Spec.Ingress) != 2 {
		t.Fatalf("network policy selects %v with %d rules", np.Spec.PodSelector.MatchLabels, len(np.Spec.Ingress))
	}
	ports := map[string]string{}
	for _, r := range np.Spec.Ingress {
		var from []string
		for _, p := range r.From {
			switch {
			case p.IPBlock != nil:
				from = append(from, "nodes")
			case p.PodSelector != nil:
				from = append(from, p.PodSelector.MatchLabels["app.kubernetes.io/name"])
			case p.NamespaceSelector != nil:
				from = append(from, "operators")
			}
		}
		sort.Strings(from)
		for _, p := range r.Ports {
			ports[p.Port.String()] = strings.Join(from, ",")
		}
	}
	want := map[string]string{"grpc": "nodes,operators", "http": "alertmanager,operators,prometheus"}
	if !reflect.DeepEqual(ports, want) {
		t.Errorf("network policy lets in %v, want %v", ports, want)
	}
}

func mountOf(c corev1.Container, volume string) string {
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m.MountPath
		}
	}
	return ""
}

func hostPathOf(ps corev1.PodSpec, volume string) string {
	for _, v := range ps.Volumes {
		if v.Name == volume && v.HostPath != nil {
			return v.HostPath.Path
		}
	}
	return ""
}

func underAMount(c corev1.Container, path string) bool {
	if path == "" {
		return false
	}
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") {
			return true
		}
	}
	return false
}

// checkMounts checks that every mount names a volume and every volume is
// mounted.
func checkMounts(t *testing.T, who string, ps corev1.PodSpec, claims ...string) {
	t.Helper()
	vols := map[string]bool{}
	for _, v := range ps.Volumes {
		vols[v.Name] = false
	}
	for _, c := range claims {
		vols[c] = false
	}
	for _, c := range ps.Containers {
		for _, m := range c.VolumeMounts {
			if _, ok := vols[m.Name]; !ok {
				t.Errorf("%s mounts volume %q, which the pod does not have", who, m.Name)
			}
			vols[m.Name] = true
		}
	}
	for v, used := range vols {
		if !used {
			t.Errorf("%s: volume %q is not mounted", who, v)
		}
	}
}

// TestKustomize renders the base with kubectl (the kustomize users run) and
// decodes the result strictly: the namespace and images it sets, and every
// object of the base in it.
func TestKustomize(t *testing.T) {
	kubectl := testenv.LookPath(t, "kubectl")
	root := repoRoot(t)
	out := runTool(t, root, kubectl, "kustomize", "deploy/daemonset")
	docs := splitYAML([]byte(out))
	if want := len(loadBase(t)); len(docs) != want {
		t.Errorf("kustomize rendered %d objects, the base has %d", len(docs), want)
	}
	images := map[string]bool{}
	for i, doc := range docs {
		obj, err := decodeStrict(doc)
		if err != nil {
			t.Fatalf("rendered object %d: %v", i+1, err)
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
		var ps *corev1.PodSpec
		switch o := obj.(type) {
		case *appsv1.DaemonSet:
			ps = &o.Spec.Template.Spec
		case *appsv1.StatefulSet:
			ps = &o.Spec.Template.Spec
		}
		if ps != nil {
			for _, c := range ps.Containers {
				images[c.Image] = true
			}
		}
	}
	want := map[string]bool{"ghcr.io/vigilhq/vigil-agent:dev": true, "ghcr.io/vigilhq/vigil-aggregator:dev": true}
	if !reflect.DeepEqual(images, want) {
		t.Errorf("rendered images %v, want %v (the names cmd/vigil-image gives)", images, want)
	}
}

// TestPrometheusRuleInSync keeps deploy/daemonset/prometheusrule.yaml equal
// to deploy/prometheus/vigil-rules.yml (go test ./deploy -run
// PrometheusRule -update rewrites it).
func TestPrometheusRuleInSync(t *testing.T) {
	root := repoRoot(t)
	rules, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/vigil-rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var spec monv1.PrometheusRuleSpec
	if err := unmarshalStrict(rules, &spec); err != nil {
		t.Fatalf("vigil-rules.yml as a PrometheusRule spec: %v", err)
	}
	pr := monv1.PrometheusRule{
		TypeMeta:   metav1.TypeMeta{APIVersion: "monitoring.coreos.com/v1", Kind: "PrometheusRule"},
		ObjectMeta: metav1.ObjectMeta{Name: "vigil", Labels: map[string]string{"app.kubernetes.io/name": "vigil"}},
		Spec:       spec,
	}
	body, err := yaml.Marshal(pr)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("# Generated from deploy/prometheus/vigil-rules.yml by deploy/daemonset_test.go\n"+
		"# (go test ./deploy -run PrometheusRule -update); do not edit.\n"), body...)
	path := filepath.Join(root, "deploy/daemonset/prometheusrule.yaml")
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is not vigil-rules.yml: run go test ./deploy -run PrometheusRule -update", path)
	}
	var back monv1.PrometheusRule
	if err := unmarshalStrict(got, &back); err != nil {
		t.Fatal(err)
	}
	if n := len(back.Spec.Groups); n != len(spec.Groups) || n == 0 {
		t.Fatalf("prometheusrule.yaml has %d groups, vigil-rules.yml %d", n, len(spec.Groups))
	}
}
