package deploy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/testenv"
	"github.com/vigilhq/vigil/test/chain"
)

// webhookServerName is the name deploy/alertmanager/alertmanager.yml
// expects in the aggregator's certificate (tls_config.server_name).
const webhookServerName = "vigil-aggregator.vigil-system.svc"

// selfSignedTLS makes a CA-signed serving certificate for webhookServerName
// and 127.0.0.1 and returns the server's TLS config and the CA in PEM.
func selfSignedTLS(t *testing.T) (*tls.Config, []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: webhookServerName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), DNSNames: []string{webhookServerName},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// webhookPost is what the test's stand-in for the aggregator's webhook saw.
type webhookPost struct {
	auth string
	msg  struct {
		Version string `json:"version"`
		Status  string `json:"status"`
		Alerts  []struct {
			Status string            `json:"status"`
			Labels map[string]string `json:"labels"`
		} `json:"alerts"`
	}
}

// TestAlertmanagerDelivers runs Debian's Alertmanager with the shipped
// configuration (only the webhook's address and the files of its token and
// CA pointed at the test's), posts a remediation alert and an ordinary one
// to it, and checks that the remediation alert reaches the webhook over TLS
// (verified against the configured CA and server name) with the bearer
// token from the credentials file, in payload version 4, within a few
// seconds (group_wait 5s), and that the ordinary alert does not.
func TestAlertmanagerDelivers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Alertmanager")
	}
	am := testenv.LookPath(t, "prometheus-alertmanager")
	root := repoRoot(t)
	src, err := os.ReadFile(filepath.Join(root, "deploy/alertmanager/alertmanager.yml"))
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var posts []webhookPost
	tlsConf, caPEM := selfSignedTLS(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p webhookPost
		p.auth = r.Header.Get("Authorization")
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path != "/api/v1/alerts" || json.Unmarshal(b, &p.msg) != nil {
			t.Errorf("webhook got %s %s: %s", r.Method, r.URL.Path, b)
		}
		mu.Lock()
		posts = append(posts, p)
		mu.Unlock()
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	dir := t.TempDir()
	const token = "test-alertmanager-token-0123456789"
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := string(src)
	for old, repl := range map[string]string{
		"https://vigil-aggregator.vigil-system.svc:7401/api/v1/alerts": "https://" + ln.Addr().String() + "/api/v1/alerts",
		"/etc/alertmanager/secrets/vigil-api-token/token":              tokenFile,
		"/etc/alertmanager/configmaps/vigil-ca-bundle/ca.crt":          caFile,
	} {
		if !strings.Contains(conf, old) {
			t.Fatalf("alertmanager.yml no longer has %q: update this test", old)
		}
		conf = strings.ReplaceAll(conf, old, repl)
	}
	confPath := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr, err := chain.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "alertmanager.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(am, "--config.file", confPath, "--storage.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr, "--cluster.listen-address=")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			t.Logf("alertmanager log:\n%s", chain.LogTail(logf.Name(), 30))
		}
	})

	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get("http://" + addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("alertmanager not ready in 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	now := time.Now().UTC().Format(time.RFC3339)
	alerts := fmt.Sprintf(`[
	  {"labels": {"alertname": "VigilContainerUnhealthy", "vigil_action": "restart_container", "severity": "warning",
	              "node": "n1", "namespace": "default", "container": "web", "status": "unhealthy"}, "startsAt": %q},
	  {"labels": {"alertname": "VigilContainerCrashLooping", "severity": "warning", "node": "n1", "namespace": "default", "container": "loop"}, "startsAt": %q}
	]`, now, now)
	posted := time.Now()
	resp, err := hc.Post("http://"+addr+"/api/v2/alerts", "application/json", bytes.NewBufferString(alerts))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("posting alerts: %s", resp.Status)
	}

	deadline = time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(posts)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the webhook received nothing in 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("first webhook post %.1fs after the alert was posted (group_wait 5s)", time.Since(posted).Seconds())
	if d := time.Since(posted); d > 20*time.Second {
		t.Errorf("the remediation alert took %s to reach the webhook: group_wait is not short", d)
	}
	// Give the ordinary alert time to be (wrongly) routed, past group_wait.
	time.Sleep(6 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	for _, p := range posts {
		if p.auth != "Bearer "+token {
			t.Errorf("Authorization %q, want the bearer token from credentials_file", p.auth)
		}
		if p.msg.Version != "4" || p.msg.Status != "firing" {
			t.Errorf("payload version %q status %q, want 4 and firing", p.msg.Version, p.msg.Status)
		}
		for _, a := range p.msg.Alerts {
			if a.Labels["vigil_action"] == "" {
				t.Errorf("alert %s without vigil_action reached the aggregator's webhook", a.Labels["alertname"])
			}
		}
	}
	if len(posts) != 1 || len(posts[0].msg.Alerts) != 1 || posts[0].msg.Alerts[0].Labels["container"] != "web" {
		t.Errorf("webhook posts %+v: want one, with the one remediation alert", posts)
	}
}
