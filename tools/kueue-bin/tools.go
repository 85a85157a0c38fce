//go:build tools

// Package tools pins Kueue's controller manager, which build-bins.sh compiles.
package tools

import (
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
