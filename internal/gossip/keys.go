package gossip

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/memberlist"

	"github.com/vigilhq/vigil/internal/errdefs"
)

// ReadKeyFile reads a key file (see Config.KeyFile): one base64 key of 16,
// 24 or 32 bytes per line, the first one primary. The error names the file
// and the line; it wraps errdefs.ErrInvalid for a bad content and
// errdefs.ErrNotFound for a missing file.
func ReadKeyFile(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("gossip key file %s: %w", path, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	return ParseKeys(path, data)
}

// ParseKeys parses the content of a key file; name is used in errors.
// Blank lines and lines starting with # are skipped; a key repeated is
// kept once. At least one key is required.
func ParseKeys(name string, data []byte) ([][]byte, error) {
	var keys [][]byte
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("gossip key file %s, line %d: not base64 (%v): %w", name, i+1, err, errdefs.ErrInvalid)
		}
		if err := memberlist.ValidateKey(key); err != nil {
			return nil, fmt.Errorf("gossip key file %s, line %d: a key of %d bytes, it must be 16, 24 or 32 (AES-128, -192, -256): %w", name, i+1, len(key), errdefs.ErrInvalid)
		}
		dup := false
		for _, k := range keys {
			dup = dup || bytes.Equal(k, key)
		}
		if !dup {
			keys = append(keys, key)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("gossip key file %s: no key in it: %w", name, errdefs.ErrInvalid)
	}
	return keys, nil
}

// applyKeys makes ring hold exactly keys, keys[0] primary, in the order
// that never leaves the ring without a key peers use: install the new keys,
// switch the primary, then remove the keys that are gone. It reports
// whether anything changed.
func applyKeys(ring *memberlist.Keyring, keys [][]byte) (bool, error) {
	changed := false
	for _, k := range keys {
		if !hasKey(ring.GetKeys(), k) {
			if err := ring.AddKey(k); err != nil {
				return changed, err
			}
			changed = true
		}
	}
	if !bytes.Equal(ring.GetPrimaryKey(), keys[0]) {
		if err := ring.UseKey(keys[0]); err != nil {
			return changed, err
		}
		changed = true
	}
	for _, k := range cloneKeys(ring.GetKeys()) {
		if !hasKey(keys, k) {
			if err := ring.RemoveKey(k); err != nil {
				return changed, err
			}
			changed = true
		}
	}
	return changed, nil
}

func hasKey(keys [][]byte, k []byte) bool {
	for _, x := range keys {
		if bytes.Equal(x, k) {
			return true
		}
	}
	return false
}

// cloneKeys copies the ring's slice: RemoveKey changes it in place.
func cloneKeys(keys [][]byte) [][]byte {
	out := make([][]byte, len(keys))
	copy(out, keys)
	return out
}
