package remediation

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// jsonError says what is wrong with body, which failed to decode with err,
// in the terms of the JSON its sender wrote: where (a jq path such as
// .alerts[1].labels.team) and which JSON type was expected, never a Go
// type. root says what the whole body should be ("an object (Alertmanager
// webhook v4)").
func jsonError(body []byte, err error, root string) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		path, ok := jsonPathAt(body, typ.Offset)
		if !ok && typ.Field != "" {
			path = "." + typ.Field // encoding/json's path: names without indexes
		}
		if path == "" {
			return fmt.Sprintf("the payload is %s, want %s", jsonValue(typ.Value), root)
		}
		return fmt.Sprintf("%s is %s, want %s", path, jsonValue(typ.Value), jsonWant(typ.Type, typ.Value))
	case errors.Is(err, io.EOF):
		return "empty body"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	}
	return err.Error()
}

// jsonValue names the JSON value encoding/json describes as v ("array",
// "bool", "number 1.5").
func jsonValue(v string) string {
	switch {
	case v == "bool":
		return "a JSON boolean"
	case strings.HasPrefix(v, "number "):
		return "the number " + clip(strings.TrimPrefix(v, "number "))
	case v == "array", v == "object":
		return "a JSON " + v
	}
	return "a JSON " + clip(v)
}

// jsonWant names the JSON type that decodes into t. value is what was
// there instead: a number that did not fit gets the range that fits.
func jsonWant(t reflect.Type, value string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	number := strings.HasPrefix(value, "number")
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if number {
			shift := 64 - t.Bits()
			return fmt.Sprintf("a whole number from %d to %d", int64(math.MinInt64)>>shift, int64(math.MaxInt64)>>shift)
		}
		return "a whole number"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if number {
			return fmt.Sprintf("a whole number from 0 to %d", uint64(math.MaxUint64)>>(64-t.Bits()))
		}
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	return "another JSON type"
}

// jsonPathAt returns the jq path of the value of body that encoding/json
// had read up to offset when it found the value's type wrong (an
// UnmarshalTypeError's Offset: just after a scalar, or after the opening
// bracket of an object or array); "" for the whole body. ok is false when
// body has no value there.
func jsonPathAt(body []byte, offset int64) (path string, ok bool) {
	type level struct {
		array   bool
		index   int
		key     string
		wantKey bool
	}
	var stack []*level
	// next moves the innermost container past the value just read.
	next := func() {
		if len(stack) == 0 {
			return
		}
		top := stack[len(stack)-1]
		if top.array {
			top.index++
		} else {
			top.wantKey = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		d, isDelim := tok.(json.Delim)
		if isDelim && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			next()
			continue
		}
		if n := len(stack); n > 0 && stack[n-1].wantKey {
			stack[n-1].key, _ = tok.(string) // the decoder gives object keys as strings
			stack[n-1].wantKey = false
			continue
		}
		if dec.InputOffset() >= offset {
			var b strings.Builder
			for _, l := range stack {
				if l.array {
					fmt.Fprintf(&b, "[%d]", l.index)
				} else {
					b.WriteString(jqKey(l.key))
				}
			}
			return b.String(), true
		}
		if isDelim {
			stack = append(stack, &level{array: d == '[', wantKey: d == '{'})
			continue
		}
		next()
	}
}

var jqIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// jqKey is an object key as a step of a jq path: .name, or ["other key"].
func jqKey(k string) string {
	if len(k) <= 64 && jqIdent.MatchString(k) {
		return "." + k
	}
	return "[" + strconv.Quote(clip(k)) + "]"
}
