package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"

	"github.com/vigilhq/vigil/internal/errdefs"
)

func TestIdentityOf(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name    string
		cn      string
		uris    []string
		allowCN bool
		want    Identity
		wantErr bool
	}{
		{name: "node", uris: []string{"spiffe://vigil/node/n1"}, want: Identity{RoleNode, "n1"}},
		{name: "operator", cn: "alice", uris: []string{"spiffe://vigil/operator/alice"}, want: Identity{RoleOperator, "alice"}},
		{name: "viewer beside another trust domain", uris: []string{"spiffe://example.org/ns/x", "spiffe://vigil/viewer/bob"}, want: Identity{RoleViewer, "bob"}},
		{name: "two identities", uris: []string{"spiffe://vigil/viewer/bob", "spiffe://vigil/operator/bob"}, wantErr: true},
		{name: "unknown role", uris: []string{"spiffe://vigil/admin/root"}, wantErr: true},
		{name: "no name", uris: []string{"spiffe://vigil/node/"}, wantErr: true},
		{name: "nested name", uris: []string{"spiffe://vigil/node/a/b"}, wantErr: true},
		{name: "query", uris: []string{"spiffe://vigil/node/a?x=1"}, wantErr: true},
		{name: "plain CN refused by default", cn: "admin", wantErr: true},
		{name: "plain CN as a node when allowed", cn: "n2", allowCN: true, want: Identity{RoleNode, "n2"}},
		{name: "SAN wins over CN", cn: "n3", uris: []string{"spiffe://vigil/viewer/v"}, allowCN: true, want: Identity{RoleViewer, "v"}},
		{name: "empty", allowCN: true, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &x509.Certificate{Subject: pkix.Name{CommonName: tt.cn}}
			for _, s := range tt.uris {
				c.URIs = append(c.URIs, u(s))
			}
			got, err := IdentityOf(c, tt.allowCN)
			if tt.wantErr {
				if !errors.Is(err, errdefs.ErrPermission) {
					t.Fatalf("IdentityOf = %v, %v; want ErrPermission", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("IdentityOf = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestRoleAllows(t *testing.T) {
	for _, tt := range []struct {
		have, need Role
		want       bool
	}{
		{RoleOperator, RoleViewer, true},
		{RoleOperator, RoleAlertmanager, true},
		{RoleOperator, RoleNode, false},
		{RoleViewer, RoleOperator, false},
		{RoleViewer, RoleViewer, true},
		{RoleNode, RoleViewer, false},
		{RoleAlertmanager, RoleViewer, false},
	} {
		if got := tt.have.Allows(tt.need); got != tt.want {
			t.Errorf("%s.Allows(%s) = %v, want %v", tt.have, tt.need, got, tt.want)
		}
	}
}
