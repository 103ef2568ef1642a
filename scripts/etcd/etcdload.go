// etcdload: closed-loop put/get load against an etcd cluster, for side-by-side
// comparison with raftctl bench. Prints one summary line in key=value form.
//
// This copy of ../shared/bench/etcd/etcdload.go adds `-op mixed` (90% linearizable gets,
// 10% puts, chosen per operation as raftctl bench --op mixed does); scripts/bench.sh runs
// it through the shared run.sh for the mixed workload only.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:21379", "comma-separated")
	clients := flag.Int("clients", 1, "concurrent closed-loop clients")
	conns := flag.Int("conns", 1, "gRPC connections shared by the clients")
	total := flag.Int("n", 10000, "total operations")
	valSize := flag.Int("value-size", 256, "value bytes")
	keys := flag.Int("keys", 10000, "key space")
	op := flag.String("op", "put", "put | get (linearizable) | mixed (90% get, 10% put)")
	flag.Parse()

	eps := strings.Split(*endpoints, ",")
	cs := make([]*clientv3.Client, *conns)
	for i := range cs {
		c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
		if err != nil {
			panic(err)
		}
		cs[i] = c
	}
	val := strings.Repeat("v", *valSize)
	per := *total / *clients
	lats := make([][]time.Duration, *clients)
	var wg sync.WaitGroup
	start := time.Now()
	errs := 0
	var mu sync.Mutex
	for w := 0; w < *clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := cs[w%len(cs)]
			r := rand.New(rand.NewSource(int64(w)))
			l := make([]time.Duration, 0, per)
			for i := 0; i < per; i++ {
				k := fmt.Sprintf("key%08d", r.Intn(*keys))
				t := time.Now()
				var err error
				write := *op == "put" || (*op == "mixed" && r.Intn(10) == 0)
				if write {
					_, err = c.Put(context.Background(), k, val)
				} else {
					_, err = c.Get(context.Background(), k)
				}
				if err != nil {
					mu.Lock()
					errs++
					mu.Unlock()
					continue
				}
				l = append(l, time.Since(t))
			}
			lats[w] = l
		}(w)
	}
	wg.Wait()
	el := time.Since(start)
	all := []time.Duration{}
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) }
	fmt.Printf("system=etcd op=%s clients=%d ops=%d errors=%d secs=%.3f ops_per_sec=%.0f p50_us=%.0f p99_us=%.0f\n",
		*op, *clients, len(all), errs, el.Seconds(), float64(len(all))/el.Seconds(), q(0.5), q(0.99))
}
