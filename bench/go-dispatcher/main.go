// Command go-dispatcher is a plain grpc-go coprocess.Dispatcher, the kind of server a Tyk user
// writes in an afternoon: Dispatch returns the Object it was sent, DispatchEvent returns an
// empty EventReply, and nothing is logged per call. It is the grpc-go point of comparison in
// bench/gateway.sh.
//
// The coprocess package is generated from the repository's proto/*.proto by build.sh into a
// build directory; it is not kept in the repository.
//
//	go-dispatcher -listen unix:///tmp/dispatcher.sock
//	go-dispatcher -listen tcp://127.0.0.1:50051   (or 127.0.0.1:50051)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"tyk-dispatcher/bench/go-dispatcher/coprocess"
)

type dispatcher struct {
	coprocess.UnimplementedDispatcherServer
}

func (dispatcher) Dispatch(_ context.Context, object *coprocess.Object) (*coprocess.Object, error) {
	return object, nil
}

func (dispatcher) DispatchEvent(_ context.Context, _ *coprocess.Event) (*coprocess.EventReply, error) {
	return &coprocess.EventReply{}, nil
}

// parseListen splits tcp://host:port, host:port or unix:///path into a network and an address.
func parseListen(s string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(s, "unix://"):
		path := strings.TrimPrefix(s, "unix://")
		if !strings.HasPrefix(path, "/") {
			return "", "", fmt.Errorf("%q: a unix address needs an absolute path (unix:///path)", s)
		}
		return "unix", path, nil
	case strings.HasPrefix(s, "tcp://"):
		s = strings.TrimPrefix(s, "tcp://")
	case strings.Contains(s, "://"):
		return "", "", fmt.Errorf("%q: only tcp:// and unix:// are supported", s)
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", "", fmt.Errorf("%q: %w", s, err)
	}
	return "tcp", s, nil
}

func main() {
	listen := flag.String("listen", "tcp://127.0.0.1:50051", "listen address: tcp://host:port, host:port or unix:///path")
	flag.Parse()
	log.SetPrefix("go-dispatcher: ")
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	network, address, err := parseListen(*listen)
	if err != nil {
		log.Fatalf("-listen %v", err)
	}
	if network == "unix" {
		// A socket left behind by an earlier run would make the bind fail.
		if info, err := os.Lstat(address); err == nil && info.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(address)
		}
	}
	lis, err := net.Listen(network, address)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}

	server := grpc.NewServer()
	coprocess.RegisterDispatcherServer(server, dispatcher{})

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-signals
		log.Printf("%v: stopping", sig)
		stopped := make(chan struct{})
		go func() { server.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			server.Stop()
		}
	}()

	log.Printf("listening on %s://%s", network, lis.Addr())
	if err := server.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		log.Fatalf("serve: %v", err)
	}
}
