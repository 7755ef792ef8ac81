package health

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vigilhq/vigil/internal/errdefs"
	"github.com/vigilhq/vigil/internal/runtime"
)

func TestParseConfig(t *testing.T) {
	lo := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port) }
	dflt := func(c Config) Config {
		c.Interval, c.Timeout, c.StartPeriod, c.Retries = DefaultInterval, DefaultTimeout, DefaultStartPeriod, DefaultRetries
		return c
	}
	tests := []struct {
		name    string
		labels  map[string]string
		image   *runtime.Healthcheck
		manager runtime.Manager
		want    Config
		wantOK  bool
		wantErr []string
	}{
		{name: "nothing"},
		{name: "cmd label", labels: map[string]string{LabelCmd: "wget -q -O- localhost/ready"}, wantOK: true,
			want: dflt(Config{Kind: KindExec, Source: SourceLabel, Command: []string{"/bin/sh", "-c", "wget -q -O- localhost/ready"}})},
		{name: "http label", labels: map[string]string{LabelHTTP: "http://:8080/healthz?full=1"}, wantOK: true,
			want: dflt(Config{Kind: KindHTTP, Source: SourceLabel, Addr: lo(8080), Path: "/healthz?full=1"})},
		{name: "http label without path", labels: map[string]string{LabelHTTP: "http://:80"}, wantOK: true,
			want: dflt(Config{Kind: KindHTTP, Source: SourceLabel, Addr: lo(80), Path: "/"})},
		{name: "http label with IPv6", labels: map[string]string{LabelHTTP: "http://[::1]:80/x"}, wantOK: true,
			want: dflt(Config{Kind: KindHTTP, Source: SourceLabel, Addr: netip.MustParseAddrPort("[::1]:80"), Path: "/x"})},
		{name: "tcp label", labels: map[string]string{LabelTCP: ":5432"}, wantOK: true,
			want: dflt(Config{Kind: KindTCP, Source: SourceLabel, Addr: lo(5432)})},
		{name: "tcp label with IP", labels: map[string]string{LabelTCP: "10.0.0.7:5432"}, wantOK: true,
			want: dflt(Config{Kind: KindTCP, Source: SourceLabel, Addr: netip.MustParseAddrPort("10.0.0.7:5432")})},
		{name: "grpc label", labels: map[string]string{LabelGRPC: ":9090"}, wantOK: true,
			want: dflt(Config{Kind: KindGRPC, Source: SourceLabel, Addr: lo(9090)})},
		{name: "grpc label with service", labels: map[string]string{LabelGRPC: ":9090/pkg.Svc"}, wantOK: true,
			want: dflt(Config{Kind: KindGRPC, Source: SourceLabel, Addr: lo(9090), Service: "pkg.Svc"})},
		{name: "timing labels", labels: map[string]string{LabelTCP: ":1", LabelInterval: "5s", LabelTimeout: "500ms", LabelStartPeriod: "1m", LabelRetries: "7"}, wantOK: true,
			want: Config{Kind: KindTCP, Source: SourceLabel, Addr: lo(1), Interval: 5 * time.Second, Timeout: 500 * time.Millisecond, StartPeriod: time.Minute, Retries: 7}},
		{name: "image CMD", image: &runtime.Healthcheck{Test: []string{"CMD", "/bin/check", "--fast"}, Interval: 10 * time.Second, Retries: 2}, wantOK: true,
			want: Config{Kind: KindExec, Source: SourceImage, Command: []string{"/bin/check", "--fast"}, Interval: 10 * time.Second, Timeout: DefaultTimeout, Retries: 2}},
		{name: "image CMD-SHELL", image: &runtime.Healthcheck{Test: []string{"CMD-SHELL", "curl -f localhost || exit 1"}, StartPeriod: 5 * time.Second}, wantOK: true,
			want: Config{Kind: KindExec, Source: SourceImage, Command: []string{"/bin/sh", "-c", "curl -f localhost || exit 1"}, Interval: DefaultInterval, Timeout: DefaultTimeout, StartPeriod: 5 * time.Second, Retries: DefaultRetries}},
		{name: "image NONE", image: &runtime.Healthcheck{Test: []string{"NONE"}}},
		{name: "image empty test", image: &runtime.Healthcheck{}},
		{name: "labels win over image", labels: map[string]string{LabelTCP: ":1"}, image: &runtime.Healthcheck{Test: []string{"CMD", "x"}, Interval: 3 * time.Second}, wantOK: true,
			want: dflt(Config{Kind: KindTCP, Source: SourceLabel, Addr: lo(1)})},
		{name: "timing labels override the image", labels: map[string]string{LabelRetries: "9"}, image: &runtime.Healthcheck{Test: []string{"CMD", "x"}, Interval: 3 * time.Second}, wantOK: true,
			want: Config{Kind: KindExec, Source: SourceImage, Command: []string{"x"}, Interval: 3 * time.Second, Timeout: DefaultTimeout, Retries: 9}},
		{name: "kubelet containers are not probed", labels: map[string]string{LabelTCP: ":1"}, manager: runtime.ManagerKubelet},
		{name: "kubelet containers with bad labels are not probed either", labels: map[string]string{LabelTCP: "x"}, manager: runtime.ManagerKubelet},
		{name: "docker runs its image healthcheck itself", image: &runtime.Healthcheck{Test: []string{"CMD", "x"}}, manager: runtime.ManagerDocker},
		{name: "labels on a docker container", labels: map[string]string{LabelTCP: ":1"}, manager: runtime.ManagerDocker, wantOK: true,
			want: dflt(Config{Kind: KindTCP, Source: SourceLabel, Addr: lo(1)})},
		{name: "containerd-managed containers are probed", image: &runtime.Healthcheck{Test: []string{"CMD", "x"}}, manager: runtime.ManagerContainerd, wantOK: true,
			want: dflt(Config{Kind: KindExec, Source: SourceImage, Command: []string{"x"}})},

		{name: "two probes", labels: map[string]string{LabelTCP: ":1", LabelHTTP: "http://:1/"},
			wantErr: []string{"vigil.io/health-http, vigil.io/health-tcp conflict", "exactly one"}},
		{name: "empty cmd", labels: map[string]string{LabelCmd: "  "}, wantErr: []string{`vigil.io/health-cmd="  "`, "empty command"}},
		{name: "https", labels: map[string]string{LabelHTTP: "https://:443/"}, wantErr: []string{`vigil.io/health-http="https://:443/"`, "scheme must be http"}},
		{name: "http without port", labels: map[string]string{LabelHTTP: "http://localhost/"}, wantErr: []string{"no port"}},
		{name: "http host name", labels: map[string]string{LabelHTTP: "http://localhost:80/"}, wantErr: []string{`host "localhost" is not an IP literal`}},
		{name: "http port zero", labels: map[string]string{LabelHTTP: "http://:0/"}, wantErr: []string{"port must be a number from 1 to 65535"}},
		{name: "http port too big", labels: map[string]string{LabelHTTP: "http://:65536/"}, wantErr: []string{"port must be a number"}},
		{name: "http user info", labels: map[string]string{LabelHTTP: "http://u:p@:80/"}, wantErr: []string{"user info"}},
		{name: "tcp no colon", labels: map[string]string{LabelTCP: "5432"}, wantErr: []string{`vigil.io/health-tcp="5432"`, "no port"}},
		{name: "tcp signed port", labels: map[string]string{LabelTCP: ":+80"}, wantErr: []string{"port must be a number"}},
		{name: "tcp bare IPv6", labels: map[string]string{LabelTCP: "::1:80"}, wantErr: []string{"not an IP literal"}},
		{name: "grpc bad port", labels: map[string]string{LabelGRPC: ":x/svc"}, wantErr: []string{`vigil.io/health-grpc=":x/svc"`, ":PORT[/SERVICE]"}},
		{name: "bad interval", labels: map[string]string{LabelTCP: ":1", LabelInterval: "5"}, wantErr: []string{`vigil.io/health-interval="5"`, "Go duration"}},
		{name: "interval too short", labels: map[string]string{LabelTCP: ":1", LabelInterval: "100ms"}, wantErr: []string{"at least 1s"}},
		{name: "zero timeout", labels: map[string]string{LabelTCP: ":1", LabelTimeout: "0s"}, wantErr: []string{`vigil.io/health-timeout="0s"`, "at least 1ms"}},
		{name: "negative start period", labels: map[string]string{LabelTCP: ":1", LabelStartPeriod: "-1s"}, wantErr: []string{`vigil.io/health-start-period="-1s"`}},
		{name: "zero retries", labels: map[string]string{LabelTCP: ":1", LabelRetries: "0"}, wantErr: []string{`vigil.io/health-retries="0"`, "from 1 to 1000"}},
		{name: "signed retries", labels: map[string]string{LabelTCP: ":1", LabelRetries: "+3"}, wantErr: []string{`vigil.io/health-retries="+3"`}},
		{name: "timing without probe", labels: map[string]string{LabelInterval: "5s"}, wantErr: []string{"vigil.io/health-interval set without a probe"}},
		{name: "unknown label", labels: map[string]string{LabelTCP: ":1", "vigil.io/health-port": "80"}, wantErr: []string{"unknown label vigil.io/health-port"}},
		{name: "image CMD without command", image: &runtime.Healthcheck{Test: []string{"CMD"}}, wantErr: []string{"CMD without a command"}},
		{name: "image unknown test", image: &runtime.Healthcheck{Test: []string{"SHELL", "x"}}, wantErr: []string{`"CMD", "CMD-SHELL" or "NONE"`}},
		{name: "image interval too short", image: &runtime.Healthcheck{Test: []string{"CMD", "x"}, Interval: time.Millisecond}, wantErr: []string{"below the agent's minimum"}},
		{name: "image negative retries", image: &runtime.Healthcheck{Test: []string{"CMD", "x"}, Retries: -1}, wantErr: []string{"negative"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := ParseConfig(tt.labels, tt.image, tt.manager)
			if tt.wantErr != nil {
				if err == nil || ok {
					t.Fatalf("ParseConfig = %+v, %v, %v; want an error", got, ok, err)
				}
				if !errors.Is(err, errdefs.ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if ok != tt.wantOK || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseConfig = %+v, %v\nwant         %+v, %v", got, ok, tt.want, tt.wantOK)
			}
			if ok {
				if err := got.Validate(); err != nil {
					t.Errorf("parsed config does not validate: %v", err)
				}
			}
		})
	}
}

// FuzzParseConfig checks that ParseConfig never panics, that a config it
// accepts validates, and that it never accepts a sub-MinInterval interval.
func FuzzParseConfig(f *testing.F) {
	f.Add("", "http://:8080/healthz", "", "", "5s", "1s", "0s", "3", "")
	f.Add("exit 0", "", "", "", "", "", "", "", "")
	f.Add("", "", ":5432", "", "", "", "", "", "")
	f.Add("", "", "", ":9090/svc", "1m", "30s", "10s", "1", "")
	f.Add("", "", "", "", "", "", "", "", "CMD-SHELL")
	f.Fuzz(func(t *testing.T, cmd, http, tcp, grpc, interval, timeout, start, retries, imageTest string) {
		labels := map[string]string{}
		for k, v := range map[string]string{LabelCmd: cmd, LabelHTTP: http, LabelTCP: tcp, LabelGRPC: grpc,
			LabelInterval: interval, LabelTimeout: timeout, LabelStartPeriod: start, LabelRetries: retries} {
			if v != "" {
				labels[k] = v
			}
		}
		var image *runtime.Healthcheck
		if imageTest != "" {
			image = &runtime.Healthcheck{Test: strings.Fields(imageTest)}
		}
		cfg, ok, err := ParseConfig(labels, image, runtime.ManagerVigil)
		if err != nil {
			if ok || !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("error %v with ok %v", err, ok)
			}
			return
		}
		if !ok {
			return
		}
		if verr := cfg.Validate(); verr != nil {
			t.Fatalf("accepted %+v that does not validate: %v", cfg, verr)
		}
		if cfg.Interval < MinInterval {
			t.Fatalf("accepted interval %s", cfg.Interval)
		}
		_ = cfg.String()
	})
}
