package gossip

import (
	"os"
	"testing"

	"github.com/vigilhq/vigil/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(testenv.Run(m))
}
