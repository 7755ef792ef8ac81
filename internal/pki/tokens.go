package pki

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// Token file limits.
const (
	// MinTokenLen is the shortest token accepted: 16 characters of a
	// random base64 or hex string carry at least 64 bits.
	MinTokenLen = 16
	// maxTokenLen and maxTokenFileBytes bound what is read.
	maxTokenLen       = 512
	maxTokenFileBytes = 1 << 20
)

// Token is one line of a token file: the holder's name and role (RoleNode
// for every bootstrap token).
type Token struct {
	Name string
	Role Role
}

// tokenSet maps the SHA-256 of a token to what it grants: a lookup hashes
// the presented token first, so no comparison runs over the secret itself.
type tokenSet map[[sha256.Size]byte]Token

// ParseBootstrapTokens parses a bootstrap token file: one token per line,
// "TOKEN NAME" (NAME says which token in logs and bindings, e.g. the
// Secret it came from); blank lines and lines starting with # are skipped.
// Errors wrap errdefs.ErrInvalid and name the line.
func ParseBootstrapTokens(data []byte) (map[[sha256.Size]byte]Token, error) {
	return parseTokens(data, false)
}

// ParseAPITokens parses an API token file: "TOKEN ROLE NAME" per line,
// ROLE viewer, operator or alertmanager (node makes no sense for the HTTP
// API and is refused); blank and # lines skipped.
func ParseAPITokens(data []byte) (map[[sha256.Size]byte]Token, error) {
	return parseTokens(data, true)
}

func parseTokens(data []byte, withRole bool) (tokenSet, error) {
	if len(data) > maxTokenFileBytes {
		return nil, fmt.Errorf("token file is %d bytes, the limit is %d: %w", len(data), maxTokenFileBytes, errdefs.ErrInvalid)
	}
	want := "TOKEN NAME"
	if withRole {
		want = "TOKEN ROLE NAME"
	}
	out := make(tokenSet)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxTokenFileBytes)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		n := 2
		if withRole {
			n = 3
		}
		if len(fields) != n {
			return nil, fmt.Errorf("line %d: %d fields, want %s: %w", line, len(fields), want, errdefs.ErrInvalid)
		}
		tok := fields[0]
		if len(tok) < MinTokenLen || len(tok) > maxTokenLen {
			return nil, fmt.Errorf("line %d: the token is %d characters long, want %d to %d: %w", line, len(tok), MinTokenLen, maxTokenLen, errdefs.ErrInvalid)
		}
		if i := strings.IndexFunc(tok, func(r rune) bool { return r < 0x21 || r > 0x7e }); i >= 0 {
			return nil, fmt.Errorf("line %d: the token holds a character that is not printable ASCII: %w", line, errdefs.ErrInvalid)
		}
		t := Token{Role: RoleNode, Name: fields[n-1]}
		if withRole {
			r, err := ParseRole(fields[1])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			if r == RoleNode {
				return nil, fmt.Errorf("line %d: role node is for agents' certificates and makes no sense for the HTTP API: %w", line, errdefs.ErrInvalid)
			}
			t.Role = r
		}
		if err := ValidName(t.Name); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		h := sha256.Sum256([]byte(tok))
		if _, dup := out[h]; dup {
			return nil, fmt.Errorf("line %d: the same token appears twice: %w", line, errdefs.ErrInvalid)
		}
		out[h] = t
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("token file: %v: %w", err, errdefs.ErrInvalid)
	}
	return out, nil
}

// TokenFile is a token file reloaded when it changes (a stat per lookup):
// adding a line grants, deleting it revokes, from the next lookup on.
// While the file is missing or does not parse, every token is refused
// (a revocation must never be undone by a typo) and Lookup says why.
// Safe for concurrent use.
type TokenFile struct {
	path  string
	parse func([]byte) (map[[sha256.Size]byte]Token, error)

	mu     sync.Mutex
	stamp  fileStamp
	loaded bool
	tokens tokenSet
	err    error
}

// OpenBootstrapTokens opens a bootstrap token file; it must parse now.
func OpenBootstrapTokens(path string) (*TokenFile, error) {
	return openTokens(path, ParseBootstrapTokens)
}

// OpenAPITokens opens an API token file; it must parse now.
func OpenAPITokens(path string) (*TokenFile, error) {
	return openTokens(path, ParseAPITokens)
}

func openTokens(path string, parse func([]byte) (map[[sha256.Size]byte]Token, error)) (*TokenFile, error) {
	f := &TokenFile{path: path, parse: parse}
	f.reload()
	if f.err != nil {
		if !errors.Is(f.err, errdefs.ErrInvalid) {
			return nil, fmt.Errorf("%w: %w", f.err, errdefs.ErrInvalid)
		}
		return nil, f.err
	}
	return f, nil
}

func (f *TokenFile) reload() {
	st, err := stamp(f.path)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && f.loaded && st == f.stamp {
		return
	}
	f.loaded, f.stamp, f.tokens = true, st, nil
	if err != nil {
		f.err = fmt.Errorf("token file %s: %v: %w", f.path, err, errdefs.ErrUnavailable)
		return
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		f.err = fmt.Errorf("token file %s: %v: %w", f.path, err, errdefs.ErrUnavailable)
		return
	}
	tokens, err := f.parse(data)
	if err != nil {
		f.err = fmt.Errorf("token file %s: %w", f.path, err)
		return
	}
	f.tokens, f.err = tokens, nil
}

// Lookup returns what token grants, ok false for an unknown token; err is
// set while the file cannot be read or parsed (every token is refused).
func (f *TokenFile) Lookup(token string) (t Token, ok bool, err error) {
	f.reload()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return Token{}, false, f.err
	}
	t, ok = f.tokens[sha256.Sum256([]byte(token))]
	return t, ok, nil
}

// Path is the file's path.
func (f *TokenFile) Path() string { return f.path }
