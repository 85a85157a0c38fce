//go:build tools

// Package tools pins the MinIO server used as the local S3 endpoint.
package tools

import _ "github.com/minio/minio"
