// Command etcd is the etcd server used by the local control plane (make cluster-up).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
