package aggregator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigilhq/vigil/internal/pki"
	vigilv1 "github.com/vigilhq/vigil/proto/vigil/v1"
)

// public marks a method that needs no certificate (its own credential is
// checked by the handler: a bootstrap token).
const public pki.Role = "public"

// methodRoles is the one table that decides every gRPC call: the role a
// method needs. A method missing from it is refused.
var methodRoles = map[string]pki.Role{
	"/" + vigilv1.AgentGateway_ServiceDesc.ServiceName + "/Connect": pki.RoleNode,

	vigilv1.Vigil_ListNodes_FullMethodName:          pki.RoleViewer,
	vigilv1.Vigil_ListContainers_FullMethodName:     pki.RoleViewer,
	vigilv1.Vigil_GetContainer_FullMethodName:       pki.RoleViewer,
	vigilv1.Vigil_WatchEvents_FullMethodName:        pki.RoleViewer,
	vigilv1.Vigil_ListRemediations_FullMethodName:   pki.RoleViewer,
	vigilv1.Vigil_RequestRemediation_FullMethodName: pki.RoleOperator,

	vigilv1.Bootstrap_Bootstrap_FullMethodName:   public,
	vigilv1.Bootstrap_Renew_FullMethodName:       pki.RoleNode,
	vigilv1.Bootstrap_ReleaseNode_FullMethodName: pki.RoleOperator,
}

// callerKey carries the caller's Identity in a call's context.
type callerKey struct{}

// Caller returns the identity the interceptors authenticated for the call
// or HTTP request in ctx; ok is false for a public method and in insecure
// mode.
func Caller(ctx context.Context) (pki.Identity, bool) {
	id, ok := ctx.Value(callerKey{}).(pki.Identity)
	return id, ok
}

// authorizer decides calls: gRPC methods from methodRoles, HTTP routes
// from the role each was registered with.
type authorizer struct {
	insecure  bool
	allowCN   bool
	apiTokens *pki.TokenFile
	refused   *prometheus.CounterVec // role, method
}

// newAuthorizer returns the authorizer of the gRPC methods in methodRoles,
// with every refusal series they can count created at 0 (requireHTTP adds
// those of each HTTP route as it is mounted).
func newAuthorizer(insecure, allowCN bool, apiTokens *pki.TokenFile, refused *prometheus.CounterVec) *authorizer {
	z := &authorizer{insecure: insecure, allowCN: allowCN, apiTokens: apiTokens, refused: refused}
	refused.WithLabelValues("unknown", "unknown")
	for method, need := range methodRoles {
		if need != public {
			z.expect(method, need)
		}
	}
	return z
}

// expect creates at 0 the refusal series of method (a gRPC method or an
// HTTP route) needing role need: no usable credential (role none), and
// each role that does not allow need. All are known when the method is
// mounted, so that rate() sees a first refusal.
func (z *authorizer) expect(method string, need pki.Role) {
	z.refused.WithLabelValues("none", method)
	for _, r := range pki.Roles {
		if !r.Allows(need) {
			z.refused.WithLabelValues(string(r), method)
		}
	}
}

// authorize returns the context to continue the call with, or a status
// error: Unauthenticated without a usable certificate, PermissionDenied
// naming the role needed.
func (z *authorizer) authorize(ctx context.Context, method string) (context.Context, error) {
	if z.insecure {
		return ctx, nil // loopback only (Config.Validate)
	}
	need, known := methodRoles[method]
	if !known {
		z.refused.WithLabelValues("unknown", "unknown").Inc()
		return nil, status.Errorf(codes.PermissionDenied, "method %s is not in the aggregator's role table", method)
	}
	if need == public {
		return ctx, nil
	}
	cert, err := pki.PeerCertificate(ctx)
	if err != nil || cert == nil {
		z.refused.WithLabelValues("none", method).Inc()
		return nil, status.Errorf(codes.Unauthenticated, "%s needs a client certificate with role %s", method, need)
	}
	id, err := pki.IdentityOf(cert, z.allowCN)
	if err != nil {
		z.refused.WithLabelValues("none", method).Inc()
		return nil, status.Errorf(codes.PermissionDenied, "%s needs role %s: %v", method, need, err)
	}
	if !id.Role.Allows(need) {
		z.refused.WithLabelValues(string(id.Role), method).Inc()
		return nil, status.Errorf(codes.PermissionDenied, "%s needs role %s; the certificate is %s", method, need, id)
	}
	return context.WithValue(ctx, callerKey{}, id), nil
}

func (z *authorizer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := z.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (z *authorizer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := z.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &callerStream{ServerStream: ss, ctx: ctx})
}

// callerStream is a ServerStream whose context carries the caller.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callerStream) Context() context.Context { return s.ctx }

// errHTTP is an HTTP refusal: its status code and message.
type errHTTP struct {
	code int
	msg  string
}

func (e *errHTTP) Error() string { return e.msg }

// authenticateHTTP returns who sent r: a verified client certificate with
// a role, or a bearer token from the API token file, over TLS.
func (z *authorizer) authenticateHTTP(r *http.Request) (pki.Identity, error) {
	if r.TLS == nil {
		return pki.Identity{}, &errHTTP{http.StatusForbidden, "this endpoint needs TLS (https://): the aggregator serves TLS and plain HTTP on the same port"}
	}
	if chains := r.TLS.VerifiedChains; len(chains) > 0 && len(chains[0]) > 0 {
		id, err := pki.IdentityOf(chains[0][0], z.allowCN)
		if err != nil {
			return pki.Identity{}, &errHTTP{http.StatusForbidden, err.Error()}
		}
		return id, nil
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return pki.Identity{}, &errHTTP{http.StatusUnauthorized, "no credential: give a client certificate with a role, or Authorization: Bearer TOKEN"}
	}
	scheme, token, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return pki.Identity{}, &errHTTP{http.StatusUnauthorized, "the Authorization header must be Bearer TOKEN"}
	}
	if z.apiTokens == nil {
		return pki.Identity{}, &errHTTP{http.StatusUnauthorized, "bearer tokens are not accepted: the aggregator has no --api-tokens-file"}
	}
	t, found, err := z.apiTokens.Lookup(strings.TrimSpace(token))
	if err != nil {
		return pki.Identity{}, &errHTTP{http.StatusUnauthorized, "bearer tokens are refused until the token file is fixed (see the aggregator's log)"}
	}
	if !found {
		return pki.Identity{}, &errHTTP{http.StatusUnauthorized, "unknown or revoked bearer token"}
	}
	return pki.Identity{Role: t.Role, Name: t.Name}, nil
}

// requireHTTP wraps h: the request needs TLS and a credential whose role
// allows need (401 without a credential, 403 with one that does not
// allow it). route names it in vigil_aggregator_auth_refused_total.
func (z *authorizer) requireHTTP(route string, need pki.Role, h http.Handler) http.Handler {
	z.expect(route, need)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if z.insecure {
			h.ServeHTTP(w, r)
			return
		}
		id, err := z.authenticateHTTP(r)
		if err != nil {
			var he *errHTTP
			errors.As(err, &he)
			z.refused.WithLabelValues("none", route).Inc()
			if he.code == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="vigil"`)
			}
			writeJSONError(w, he.code, he.msg)
			return
		}
		if !id.Role.Allows(need) {
			z.refused.WithLabelValues(string(id.Role), route).Inc()
			writeJSONError(w, http.StatusForbidden, fmt.Sprintf("%s needs role %s; the credential is %s", route, need, id))
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, id)))
	})
}
