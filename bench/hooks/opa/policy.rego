# The benchmark's policy (bench/hooks_overhead.sh): reads are allowed and tagged.
package tyk.bench

decision := {"allow": input.request.method == "GET", "headers": {"X-Policy": "bench"}}
