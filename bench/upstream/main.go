// Command upstream is the HTTP upstream of bench/gateway.sh: every request gets 200 with the
// same small body, so the gateway, not the upstream, sets the pace.
//
//	upstream -listen 127.0.0.1:0 -addr-file upstream.addr
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// Body is what every request gets; bench/gateway.sh checks it comes back through the gateway.
const Body = "{\"upstream\":\"ok\"}\n"

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address (host:port)")
	addrFile := flag.String("addr-file", "", "write the bound address to this file once listening")
	flag.Parse()
	log.SetPrefix("upstream: ")

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	body := []byte(Body)
	length := strconv.Itoa(len(body))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{length}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	})
	server := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.Default(),
	}
	if *addrFile != "" {
		tmp := *addrFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(lis.Addr().String()+"\n"), 0o644); err != nil {
			log.Fatalf("addr file: %v", err)
		}
		if err := os.Rename(tmp, *addrFile); err != nil {
			log.Fatalf("addr file: %v", err)
		}
	}
	log.Printf("listening on %s", lis.Addr())
	log.Fatal(server.Serve(lis))
}
