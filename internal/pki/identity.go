package pki

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// TrustDomain is the host part of every Vigil identity URI:
// spiffe://vigil/ROLE/NAME.
const TrustDomain = "vigil"

// Role is what a caller may do. A certificate names it in a URI SAN
// (spiffe://vigil/ROLE/NAME); a bearer token is given one in its file.
type Role string

// The roles.
const (
	// RoleNode is an agent: it may only stream (Connect) as itself and
	// renew its own certificate.
	RoleNode Role = "node"
	// RoleViewer reads the fleet: the Vigil API's reads and GET /api/v1/*.
	RoleViewer Role = "viewer"
	// RoleOperator may do what a viewer may, and ask for actions
	// (RequestRemediation, releasing a node's name, POST /api/v1/alerts).
	RoleOperator Role = "operator"
	// RoleAlertmanager may only post alerts to the webhook
	// (POST /api/v1/alerts): a credential kept in Alertmanager's
	// configuration should not also read the fleet or ask for actions by
	// name.
	RoleAlertmanager Role = "alertmanager"
)

// Roles lists every role.
var Roles = []Role{RoleNode, RoleViewer, RoleOperator, RoleAlertmanager}

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("unknown role %q (want node, viewer, operator or alertmanager): %w", s, errdefs.ErrInvalid)
}

// Allows reports whether a holder of role have may do what role need
// allows: the same role, or an operator where a viewer or the alertmanager
// role is needed.
func (have Role) Allows(need Role) bool {
	if have == need {
		return true
	}
	return have == RoleOperator && (need == RoleViewer || need == RoleAlertmanager)
}

// Identity is who a caller is: a role and a name.
type Identity struct {
	Role Role
	Name string
}

// URI is the identity's SPIFFE-style URI, spiffe://vigil/ROLE/NAME.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: TrustDomain, Path: "/" + string(id.Role) + "/" + id.Name}
}

// String is ROLE/NAME.
func (id Identity) String() string { return string(id.Role) + "/" + id.Name }

// NodeIdentity is the identity of the node called name.
func NodeIdentity(name string) Identity { return Identity{Role: RoleNode, Name: name} }

// ValidName checks the NAME of an identity (a node name, an operator's or
// a token's name): 1 to 253 bytes of printable UTF-8 without '/' or spaces.
func ValidName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("name is empty: %w", errdefs.ErrInvalid)
	case len(name) > 253:
		return fmt.Errorf("name is %d bytes long, the limit is 253: %w", len(name), errdefs.ErrInvalid)
	case !utf8.ValidString(name) || strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) || r == '/' }) >= 0:
		return fmt.Errorf("name %q holds invalid UTF-8, spaces, '/' or unprintable characters: %w", name, errdefs.ErrInvalid)
	}
	return nil
}

// ParseIdentityURI parses spiffe://vigil/ROLE/NAME.
func ParseIdentityURI(u *url.URL) (Identity, error) {
	if u.Scheme != "spiffe" || u.Host != TrustDomain {
		return Identity{}, fmt.Errorf("%s is not a Vigil identity (want spiffe://%s/ROLE/NAME): %w", u, TrustDomain, errdefs.ErrInvalid)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return Identity{}, fmt.Errorf("identity %s carries a user, port, query or fragment: %w", u, errdefs.ErrInvalid)
	}
	role, name, ok := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	if !ok {
		return Identity{}, fmt.Errorf("identity %s: path must be /ROLE/NAME: %w", u, errdefs.ErrInvalid)
	}
	r, err := ParseRole(role)
	if err != nil {
		return Identity{}, fmt.Errorf("identity %s: %w", u, err)
	}
	if err := ValidName(name); err != nil {
		return Identity{}, fmt.Errorf("identity %s: %w", u, err)
	}
	return Identity{Role: r, Name: name}, nil
}

// IdentityOf returns the identity a verified certificate names: its one
// spiffe://vigil/ URI SAN. A certificate with no such SAN is a node named
// by its Subject Common Name when allowCommonName is set (certificates
// issued before roles existed), and refused otherwise. Errors wrap
// errdefs.ErrPermission.
func IdentityOf(cert *x509.Certificate, allowCommonName bool) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" || u.Host != TrustDomain {
			continue // another trust domain's identity: not ours to judge
		}
		id, err := ParseIdentityURI(u)
		if err != nil {
			return Identity{}, fmt.Errorf("certificate %q: %v: %w", cert.Subject.CommonName, err, errdefs.ErrPermission)
		}
		found = append(found, id)
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) > 1:
		return Identity{}, fmt.Errorf("certificate %q names %d Vigil identities; it must name one: %w", cert.Subject.CommonName, len(found), errdefs.ErrPermission)
	case allowCommonName && cert.Subject.CommonName != "":
		if err := ValidName(cert.Subject.CommonName); err != nil {
			return Identity{}, fmt.Errorf("certificate common name: %v: %w", err, errdefs.ErrPermission)
		}
		return NodeIdentity(cert.Subject.CommonName), nil
	}
	return Identity{}, fmt.Errorf("certificate %q has no spiffe://%s/ROLE/NAME URI SAN (a plain common name is accepted as a node only with --allow-cn-nodes): %w", cert.Subject.CommonName, TrustDomain, errdefs.ErrPermission)
}

// PeerCertificate returns the verified client certificate of the gRPC peer
// in ctx, nil when the connection carries none, and an error wrapping
// ErrPermission when the connection is not TLS.
func PeerCertificate(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, fmt.Errorf("no peer in context: %w", errdefs.ErrPermission)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, fmt.Errorf("connection is not TLS: %w", errdefs.ErrPermission)
	}
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil, nil
	}
	return info.State.VerifiedChains[0][0], nil
}

// PeerIdentity returns the identity of the verified client certificate of
// the gRPC peer in ctx (IdentityOf). It fails with ErrPermission when the
// connection is not TLS, carries no verified client certificate, or the
// certificate names no valid identity.
func PeerIdentity(ctx context.Context, allowCommonName bool) (Identity, error) {
	cert, err := PeerCertificate(ctx)
	if err != nil {
		return Identity{}, err
	}
	if cert == nil {
		return Identity{}, fmt.Errorf("no verified client certificate: %w", errdefs.ErrPermission)
	}
	return IdentityOf(cert, allowCommonName)
}
