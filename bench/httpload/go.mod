module tyk-dispatcher/bench/httpload

go 1.26
