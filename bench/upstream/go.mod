module tyk-dispatcher/bench/upstream

go 1.26
