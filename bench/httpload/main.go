// Command httpload is the closed-loop HTTP/1.1 load generator of bench/gateway.sh.
//
// It keeps -c connections open to one URL; on each, one GET is in flight at a time and the next
// is sent as soon as the response has been read. After -warmup, it measures for -duration: the
// requests that complete inside that window, their exact latencies, and the CPU time that the
// processes named with -pid used over the same window (utime+stime from /proc/PID/stat), its
// own CPU time and the machine's busy time (/proc/stat: processes, interrupts, steal, and each
// CPU's share).
//
// Every response, warm-up included, must have status -status and, when -body is given, exactly
// that body; anything else, or a connection error, is a failure. Prints one JSON object on
// stdout. Exit status: 0 when every request succeeded, 1 when any failed, 2 on bad usage.
//
//	httpload -url http://127.0.0.1:8080/path -c 32 -warmup 3s -duration 10s \
//	    -pid gateway=1234 -pid dispatcher=5678 [-body 'expected body'] [-probe]
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

type pidFlag []namedPID

type namedPID struct {
	name string
	pid  int
}

func (p *pidFlag) String() string { return fmt.Sprint(*p) }

func (p *pidFlag) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("want NAME=PID, got %q", s)
	}
	pid, err := strconv.Atoi(value)
	if err != nil || pid <= 0 {
		return fmt.Errorf("bad pid in %q", s)
	}
	*p = append(*p, namedPID{name, pid})
	return nil
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, just enough for a keep-alive GET.

type response struct {
	status int
	body   []byte // valid until the next read on the same connection
	close  bool   // the server will close the connection
}

var errMalformed = errors.New("malformed response")

// readLine returns one line without its CRLF; the slice is valid until the next read.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: header line too long", errMalformed)
		}
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

func hasPrefixFold(s []byte, prefix string) bool {
	return len(s) >= len(prefix) && bytes.EqualFold(s[:len(prefix)], []byte(prefix))
}

func readResponse(r *bufio.Reader, buf *[]byte) (response, error) {
	var resp response
	line, err := readLine(r)
	if err != nil {
		return resp, err
	}
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return resp, fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	if line[7] == '0' {
		resp.close = true // HTTP/1.0 closes unless it says keep-alive; never mind which
	}
	resp.status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return resp, fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	length, chunked := -1, false
	for {
		line, err = readLine(r)
		if err != nil {
			return resp, err
		}
		if len(line) == 0 {
			break
		}
		switch {
		case hasPrefixFold(line, "content-length:"):
			length, err = strconv.Atoi(string(bytes.TrimSpace(line[len("content-length:"):])))
			if err != nil || length < 0 {
				return resp, fmt.Errorf("%w: %q", errMalformed, line)
			}
		case hasPrefixFold(line, "transfer-encoding:"):
			chunked = bytes.Contains(bytes.ToLower(line), []byte("chunked"))
		case hasPrefixFold(line, "connection:"):
			if bytes.Contains(bytes.ToLower(line), []byte("close")) {
				resp.close = true
			}
		}
	}
	body := (*buf)[:0]
	switch {
	case resp.status == 204 || resp.status == 304 || resp.status/100 == 1:
	case chunked:
		for {
			line, err = readLine(r)
			if err != nil {
				return resp, err
			}
			if i := bytes.IndexByte(line, ';'); i >= 0 {
				line = line[:i]
			}
			size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 32)
			if err != nil || size < 0 {
				return resp, fmt.Errorf("%w: chunk size %q", errMalformed, line)
			}
			if size == 0 {
				for { // trailers, then the empty line
					line, err = readLine(r)
					if err != nil {
						return resp, err
					}
					if len(line) == 0 {
						break
					}
				}
				break
			}
			start := len(body)
			body = slices.Grow(body, int(size))[:start+int(size)]
			if _, err := io.ReadFull(r, body[start:]); err != nil {
				return resp, err
			}
			if line, err = readLine(r); err != nil || len(line) != 0 {
				return resp, fmt.Errorf("%w: chunk not followed by CRLF", errMalformed)
			}
		}
	case length >= 0:
		body = slices.Grow(body, length)[:length]
		if _, err := io.ReadFull(r, body); err != nil {
			return resp, err
		}
	default: // body until the server closes
		resp.close = true
		b := bytes.NewBuffer(body)
		if _, err := b.ReadFrom(r); err != nil {
			return resp, err
		}
		body = b.Bytes()
	}
	*buf = body
	resp.body = body
	return resp, nil
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc.

// procTicks returns utime+stime of a process in clock ticks.
func procTicks(pid string) (uint64, error) {
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it are space-separated.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errMalformed
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		return 0, errMalformed
	}
	utime, err1 := strconv.ParseUint(fields[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(fields[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, errMalformed
	}
	return utime + stime, nil
}

// cpuTicks is one line of /proc/stat, in clock ticks.
type cpuTicks struct {
	userSystem uint64 // user, nice, system (guest time is already in user)
	irq        uint64 // irq, softirq: charged to no process
	steal      uint64 // taken by the hypervisor
	idle       uint64 // idle, iowait
}

func (t cpuTicks) busy() uint64 { return t.userSystem + t.irq + t.steal }

// machineTicks reads the "cpu" (all CPUs) and "cpuN" lines of /proc/stat.
func machineTicks() (map[string]cpuTicks, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, err
	}
	out := map[string]cpuTicks{}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 9 || !strings.HasPrefix(fields[0], "cpu") {
			continue
		}
		var v [8]uint64 // user nice system idle iowait irq softirq steal
		for i := range v {
			if v[i], err = strconv.ParseUint(fields[i+1], 10, 64); err != nil {
				return nil, errMalformed
			}
		}
		out[fields[0]] = cpuTicks{
			userSystem: v[0] + v[1] + v[2],
			idle:       v[3] + v[4],
			irq:        v[5] + v[6],
			steal:      v[7],
		}
	}
	if _, ok := out["cpu"]; !ok {
		return nil, errMalformed
	}
	return out, nil
}

type cpuSample struct {
	procs        map[string]uint64
	machine      map[string]cpuTicks
	self         uint64
	at           time.Time
	missingProcs []string
}

func sampleCPU(pids []namedPID) cpuSample {
	s := cpuSample{procs: map[string]uint64{}, at: time.Now()}
	for _, p := range pids {
		t, err := procTicks(strconv.Itoa(p.pid))
		if err != nil {
			s.missingProcs = append(s.missingProcs, p.name)
			continue
		}
		s.procs[p.name] = t
	}
	s.self, _ = procTicks("self")
	s.machine, _ = machineTicks()
	return s
}

// ---------------------------------------------------------------------------------------------

type worker struct {
	latencies []time.Duration
	requests  uint64 // completed in the window
	warmup    uint64 // completed before it
	failures  map[string]uint64
	examples  []string
}

func (w *worker) fail(reason, example string) {
	w.failures[reason]++
	if len(w.examples) < 3 {
		w.examples = append(w.examples, example)
	}
}

func run(addr string, request []byte, wantStatus int, wantBody []byte, checkBody bool,
	windowStart, windowEnd time.Time, timeout time.Duration, w *worker) {
	var conn net.Conn
	var r *bufio.Reader
	buf := make([]byte, 0, 4096)
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		if conn == nil {
			c, err := net.DialTimeout("tcp", addr, timeout)
			if err != nil {
				w.fail("connect", err.Error())
				if time.Now().After(windowEnd) {
					return
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn = c
			r = bufio.NewReaderSize(conn, 16<<10)
		}
		start := time.Now()
		if timeout > 0 {
			_ = conn.SetDeadline(start.Add(timeout))
		}
		_, err := conn.Write(request)
		var resp response
		if err == nil {
			resp, err = readResponse(r, &buf)
		}
		end := time.Now()
		ok := false
		switch {
		case err != nil:
			w.fail("io", err.Error())
			resp.close = true
		case resp.status != wantStatus:
			w.fail("status "+strconv.Itoa(resp.status), fmt.Sprintf("status %d, body %.200q", resp.status, resp.body))
		case checkBody && !bytes.Equal(resp.body, wantBody):
			w.fail("body", fmt.Sprintf("body %.200q", resp.body))
		default:
			ok = true
		}
		if resp.close {
			conn.Close()
			conn = nil
		}
		switch {
		case end.Before(windowStart):
			w.warmup++
		case end.Before(windowEnd):
			if ok {
				w.requests++
				w.latencies = append(w.latencies, end.Sub(start))
			}
		default:
			return
		}
	}
}

func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i]) / 1e3
}

func main() {
	target := flag.String("url", "", "http://host:port/path to GET")
	connections := flag.Int("c", 32, "connections, one request in flight on each")
	warmup := flag.Duration("warmup", 3*time.Second, "load before the measured window")
	duration := flag.Duration("duration", 10*time.Second, "the measured window")
	wantStatus := flag.Int("status", 200, "the status every response must have")
	body := flag.String("body", "", "the body every response must have (unchecked when empty)")
	timeout := flag.Duration("timeout", 10*time.Second, "longest wait for one response")
	clkTck := flag.Int("clk-tck", 100, "clock ticks per second of /proc/*/stat (getconf CLK_TCK)")
	label := flag.String("label", "", "copied into the JSON output")
	probe := flag.Bool("probe", false, "send one request, check it, print the JSON and exit")
	var pids pidFlag
	flag.Var(&pids, "pid", "NAME=PID: report this process's CPU time over the window (repeatable)")
	flag.Parse()

	u, err := url.Parse(*target)
	if err != nil || u.Scheme != "http" || u.Host == "" || *connections < 1 {
		fmt.Fprintln(os.Stderr, "httpload: need -url http://host:port/path and -c >= 1")
		os.Exit(2)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	request := []byte("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUser-Agent: httpload\r\nAccept: */*\r\n\r\n")

	if *probe {
		conn, err := net.DialTimeout("tcp", addr, *timeout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "httpload: %v\n", err)
			os.Exit(1)
		}
		_ = conn.SetDeadline(time.Now().Add(*timeout))
		buf := make([]byte, 0, 4096)
		_, err = conn.Write(request)
		var resp response
		if err == nil {
			resp, err = readResponse(bufio.NewReader(conn), &buf)
		}
		conn.Close()
		out := map[string]any{"status": resp.status, "body": string(resp.body)}
		if err != nil {
			out["error"] = err.Error()
		}
		_ = json.NewEncoder(os.Stdout).Encode(out)
		if err != nil || resp.status != *wantStatus || (*body != "" && string(resp.body) != *body) {
			os.Exit(1)
		}
		return
	}

	begin := time.Now()
	windowStart := begin.Add(*warmup)
	windowEnd := windowStart.Add(*duration)
	workers := make([]*worker, *connections)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{failures: map[string]uint64{},
			latencies: make([]time.Duration, 0, 1<<16)}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(addr, request, *wantStatus, []byte(*body), *body != "", windowStart, windowEnd, *timeout, w)
		}()
	}
	time.Sleep(time.Until(windowStart))
	before := sampleCPU(pids)
	time.Sleep(time.Until(windowEnd))
	after := sampleCPU(pids)
	wg.Wait()

	var all []time.Duration
	var requests, warm, failed uint64
	failures := map[string]uint64{}
	var examples []string
	for _, w := range workers {
		all = append(all, w.latencies...)
		requests += w.requests
		warm += w.warmup
		for k, v := range w.failures {
			failures[k] += v
			failed += v
		}
		for _, e := range w.examples {
			if len(examples) < 5 {
				examples = append(examples, e)
			}
		}
	}
	slices.Sort(all)
	window := after.at.Sub(before.at).Seconds()
	tick := 1 / float64(*clkTck)
	var mean float64
	for _, d := range all {
		mean += float64(d)
	}
	if len(all) > 0 {
		mean /= float64(len(all)) * 1e3
	}
	cpu := map[string]any{}
	for _, p := range pids {
		b, ok1 := before.procs[p.name]
		a, ok2 := after.procs[p.name]
		if !ok1 || !ok2 {
			cpu[p.name] = nil
			continue
		}
		secs := float64(a-b) * tick
		entry := map[string]float64{"secs": secs, "util": secs / window}
		if requests > 0 {
			entry["us_per_request"] = secs * 1e6 / float64(requests)
		}
		cpu[p.name] = entry
	}
	selfSecs := float64(after.self-before.self) * tick
	// Machine time in cores (CPU-seconds per second of window), all CPUs and each one.
	cores := func(name string, f func(cpuTicks) uint64) float64 {
		return float64(f(after.machine[name])-f(before.machine[name])) * tick / window
	}
	perCPU := map[string]float64{}
	for name := range after.machine {
		if _, ok := before.machine[name]; ok && name != "cpu" {
			perCPU[name] = cores(name, cpuTicks.busy)
		}
	}
	out := map[string]any{
		"label":            *label,
		"url":              *target,
		"connections":      *connections,
		"warmup_secs":      warmup.Seconds(),
		"window_secs":      window,
		"requests":         requests,
		"warmup_requests":  warm,
		"rps":              float64(requests) / window,
		"failures":         failed,
		"failure_reasons":  failures,
		"failure_examples": examples,
		"latency_us": map[string]float64{
			"mean": mean,
			"p50":  percentile(all, 0.50),
			"p90":  percentile(all, 0.90),
			"p99":  percentile(all, 0.99),
			"p999": percentile(all, 0.999),
			"max":  percentile(all, 1),
		},
		"cpu":                cpu,
		"loadgen_cpu_util":   selfSecs / window,
		"machine_busy_cores": cores("cpu", cpuTicks.busy),
		"machine": map[string]any{
			"user_system_cores": cores("cpu", func(t cpuTicks) uint64 { return t.userSystem }),
			"irq_cores":         cores("cpu", func(t cpuTicks) uint64 { return t.irq }),
			"steal_cores":       cores("cpu", func(t cpuTicks) uint64 { return t.steal }),
			"busy_per_cpu":      perCPU,
		},
		"missing_pids": after.missingProcs,
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
	if failed > 0 {
		os.Exit(1)
	}
}
