// Command go-client runs one scenario of etcd's official Go client
// (go.etcd.io/etcd/client/v3, its concurrency package and its namespace wrapper)
// against the cluster named by --endpoints and prints a transcript: one line per
// step, "label<TAB>result", with what legitimately differs between two clusters
// (member and cluster IDs, lease IDs, raft terms, timings) left out or replaced by
// placeholders. The same scenario against etcd and against kuberaft must print the
// same transcript, except where node/tests/go_client.rs lists a difference with its
// reason.
//
// Every call has a deadline, and the program exits within --timeout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.uber.org/zap"
)

// recorder prints the transcript and maps server-chosen lease IDs to placeholders.
type recorder struct {
	mu     sync.Mutex
	leases map[clientv3.LeaseID]string
	steps  int
}

func (r *recorder) lease(id clientv3.LeaseID) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id == 0 {
		return "0"
	}
	if p, ok := r.leases[id]; ok {
		return p
	}
	p := fmt.Sprintf("<lease-%d>", len(r.leases)+1)
	r.leases[id] = p
	return p
}

// normalise replaces every known lease ID (in hex, as the concurrency package writes
// it into keys, and in decimal) by its placeholder; only IDs of 6 digits or more, as
// whole words.
func (r *recorder) normalise(s string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, p := range r.leases {
		for _, digits := range []string{fmt.Sprintf("%x", int64(id)), fmt.Sprintf("%d", int64(id))} {
			if len(digits) >= 6 {
				s = regexp.MustCompile(`\b`+digits+`\b`).ReplaceAllString(s, p)
			}
		}
	}
	return s
}

func (r *recorder) step(label, format string, args ...any) {
	text := r.normalise(fmt.Sprintf(format, args...))
	text = strings.ReplaceAll(text, "\n", `\n`)
	fmt.Printf("%s\t%s\n", label, text)
	r.steps++
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return "error: " + err.Error()
}

func kv(r *recorder, k *mvccpb.KeyValue) string {
	if k == nil {
		return "nil"
	}
	return fmt.Sprintf("{%s=%s c=%d m=%d v=%d lease=%s}", k.Key, k.Value, k.CreateRevision, k.ModRevision,
		k.Version, r.lease(clientv3.LeaseID(k.Lease)))
}

func kvs(r *recorder, list []*mvccpb.KeyValue) string {
	parts := make([]string, 0, len(list))
	for _, k := range list {
		parts = append(parts, kv(r, k))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func get(r *recorder, resp *clientv3.GetResponse, err error) string {
	if err != nil {
		return errText(err)
	}
	return fmt.Sprintf("rev=%d count=%d more=%v kvs=%s", resp.Header.Revision, resp.Count, resp.More, kvs(r, resp.Kvs))
}

func put(r *recorder, resp *clientv3.PutResponse, err error) string {
	if err != nil {
		return errText(err)
	}
	return fmt.Sprintf("rev=%d prev=%s", resp.Header.Revision, kv(r, resp.PrevKv))
}

func del(r *recorder, resp *clientv3.DeleteResponse, err error) string {
	if err != nil {
		return errText(err)
	}
	return fmt.Sprintf("rev=%d deleted=%d prev=%s", resp.Header.Revision, resp.Deleted, kvs(r, resp.PrevKvs))
}

func txn(r *recorder, resp *clientv3.TxnResponse, err error) string {
	if err != nil {
		return errText(err)
	}
	return fmt.Sprintf("rev=%d succeeded=%v responses=[%s]", resp.Header.Revision, resp.Succeeded, ops(r, resp.Responses))
}

func ops(r *recorder, responses []*pb.ResponseOp) string {
	parts := []string{}
	for _, op := range responses {
		switch {
		case op.GetResponseRange() != nil:
			g := op.GetResponseRange()
			parts = append(parts, fmt.Sprintf("range(count=%d more=%v kvs=%s)", g.Count, g.More, kvs(r, g.Kvs)))
		case op.GetResponsePut() != nil:
			parts = append(parts, fmt.Sprintf("put(prev=%s)", kv(r, op.GetResponsePut().PrevKv)))
		case op.GetResponseDeleteRange() != nil:
			d := op.GetResponseDeleteRange()
			parts = append(parts, fmt.Sprintf("delete(deleted=%d prev=%s)", d.Deleted, kvs(r, d.PrevKvs)))
		case op.GetResponseTxn() != nil:
			t := op.GetResponseTxn()
			parts = append(parts, fmt.Sprintf("txn(succeeded=%v [%s])", t.Succeeded, ops(r, t.Responses)))
		default:
			parts = append(parts, "?")
		}
	}
	return strings.Join(parts, " ")
}

func events(r *recorder, list []*clientv3.Event) string {
	parts := []string{}
	for _, e := range list {
		parts = append(parts, fmt.Sprintf("%s %s prev=%s", e.Type, kv(r, e.Kv), kv(r, e.PrevKv)))
	}
	return strings.Join(parts, "; ")
}

// collect reads watch responses until `want` events arrived, the channel closed, a
// canceled response came, or `within` passed, then for a moment more (nothing may
// follow); it describes what it saw. How the server batches events into responses
// is not part of the API's contract (only that one revision's events arrive
// together), so the events are listed without the responses' boundaries.
func collect(r *recorder, ch clientv3.WatchChan, want int, within time.Duration) string {
	seen := []string{}
	count := 0
	deadline := time.Now().Add(within)
	for {
		wait := time.Until(deadline)
		if count >= want {
			wait = 300 * time.Millisecond
		}
		if wait <= 0 {
			return strings.Join(append(seen, fmt.Sprintf("timeout after %d of %d events", count, want)), "; ")
		}
		select {
		case resp, ok := <-ch:
			if !ok {
				return strings.Join(append(seen, "closed"), "; ")
			}
			if resp.Canceled || resp.Err() != nil {
				return strings.Join(append(seen, fmt.Sprintf("canceled compact_revision=%d err=%s",
					resp.CompactRevision, errText(resp.Err()))), "; ")
			}
			if resp.IsProgressNotify() {
				seen = append(seen, fmt.Sprintf("progress rev=%d", resp.Header.Revision))
				continue
			}
			if resp.Created {
				seen = append(seen, fmt.Sprintf("created rev=%d", resp.Header.Revision))
				continue
			}
			count += len(resp.Events)
			seen = append(seen, events(r, resp.Events))
		case <-time.After(wait):
			if count >= want {
				return strings.Join(seen, "; ")
			}
			return strings.Join(append(seen, fmt.Sprintf("timeout after %d of %d events", count, want)), "; ")
		}
	}
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated client endpoints")
	timeout := flag.Duration("timeout", 4*time.Minute, "the whole scenario's deadline")
	flag.Parse()

	cfg := clientv3.Config{
		Endpoints:   strings.Split(*endpoints, ","),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer cli.Close()

	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(*timeout):
			fmt.Fprintln(os.Stderr, "go-client: the scenario did not finish within", *timeout)
			os.Exit(2)
		}
	}()
	r := &recorder{leases: map[clientv3.LeaseID]string{}}
	scenario(cli, r)
	close(done)
	fmt.Fprintf(os.Stderr, "go-client: %d steps\n", r.steps)
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 15*time.Second)
}

func scenario(cli *clientv3.Client, r *recorder) {
	kvScenario(cli, r)
	txnScenario(cli, r)
	leaseScenario(cli, r)
	concurrencyScenario(cli, r)
	namespaceScenario(cli, r)
	watchScenario(cli, r)
}

func kvScenario(cli *clientv3.Client, r *recorder) {
	c, cancel := ctx()
	defer cancel()
	g, err := cli.Get(c, "foo")
	r.step("kv: get on the empty store", "%s", get(r, g, err))
	for _, p := range [][2]string{{"a", "1"}, {"b", "2"}, {"c", "3"}, {"a", "11"}, {"ab", "x"}, {"abc", "y"}} {
		resp, err := cli.Put(c, p[0], p[1])
		r.step("kv: put "+p[0], "%s", put(r, resp, err))
	}
	p, err := cli.Put(c, "a", "12", clientv3.WithPrevKV())
	r.step("kv: put with prev_kv", "%s", put(r, p, err))
	p, err = cli.Put(c, "missing", "", clientv3.WithIgnoreValue())
	r.step("kv: put ignore_value on a missing key", "%s", put(r, p, err))
	p, err = cli.Put(c, "b", "", clientv3.WithIgnoreValue())
	r.step("kv: put ignore_value", "%s", put(r, p, err))
	p, err = cli.Put(c, "b", "22", clientv3.WithIgnoreLease())
	r.step("kv: put ignore_lease", "%s", put(r, p, err))

	gets := []struct {
		label string
		key   string
		opts  []clientv3.OpOption
	}{
		{"get a key", "a", nil},
		{"get a prefix", "a", []clientv3.OpOption{clientv3.WithPrefix()}},
		{"get a range", "a", []clientv3.OpOption{clientv3.WithRange("b")}},
		{"get from a key", "ab", []clientv3.OpOption{clientv3.WithFromKey()}},
		{"get with a limit", "", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(2)}},
		{"get sorted by value descending", "", []clientv3.OpOption{clientv3.WithPrefix(),
			clientv3.WithSort(clientv3.SortByValue, clientv3.SortDescend)}},
		{"get sorted by mod revision, limit 3", "", []clientv3.OpOption{clientv3.WithPrefix(),
			clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend), clientv3.WithLimit(3)}},
		{"get first key", "", clientv3.WithFirstKey()},
		{"get last create", "", clientv3.WithLastCreate()},
		{"get count only", "a", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}},
		{"get keys only", "a", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly()}},
		{"get at revision 3", "", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(3)}},
		{"get at a future revision", "a", []clientv3.OpOption{clientv3.WithRev(1000)}},
		{"get with mod revision filters", "", []clientv3.OpOption{clientv3.WithPrefix(),
			clientv3.WithMinModRev(3), clientv3.WithMaxModRev(6)}},
		{"get with create revision filters", "", []clientv3.OpOption{clientv3.WithPrefix(),
			clientv3.WithMinCreateRev(4), clientv3.WithMaxCreateRev(6)}},
		{"get serializable", "a", []clientv3.OpOption{clientv3.WithSerializable()}},
		{"get a missing key", "nothing", nil},
	}
	for _, q := range gets {
		g, err := cli.Get(c, q.key, q.opts...)
		r.step("kv: "+q.label, "%s", get(r, g, err))
	}
	d, err := cli.Delete(c, "c", clientv3.WithPrevKV())
	r.step("kv: delete with prev_kv", "%s", del(r, d, err))
	d, err = cli.Delete(c, "ab", clientv3.WithPrefix())
	r.step("kv: delete a prefix", "%s", del(r, d, err))
	d, err = cli.Delete(c, "nothing")
	r.step("kv: delete a missing key", "%s", del(r, d, err))
	p, err = cli.Put(c, "", "empty")
	r.step("kv: put an empty key", "%s", put(r, p, err))
	// Over the server's request limit (etcd's default --max-request-bytes is 1.5 MiB),
	// under the client's (2 MiB).
	p, err = cli.Put(c, "big", strings.Repeat("x", 1600*1024))
	r.step("kv: put a value over the request limit", "%s", put(r, p, err))
	p, err = cli.Put(c, "large", strings.Repeat("x", 1000*1024))
	r.step("kv: put a large value under the limit", "%s", put(r, p, err))
	d, err = cli.Delete(c, "large")
	r.step("kv: delete the large value", "%s", del(r, d, err))
}

func txnScenario(cli *clientv3.Client, r *recorder) {
	c, cancel := ctx()
	defer cancel()
	for _, p := range [][2]string{{"t1", "v1"}, {"t2", "v2"}, {"t1", "v1b"}} {
		resp, err := cli.Put(c, p[0], p[1])
		r.step("txn: put "+p[0], "%s", put(r, resp, err))
	}
	t, err := cli.Txn(c).If(
		clientv3.Compare(clientv3.Value("t1"), "=", "v1b"),
		clientv3.Compare(clientv3.Version("t1"), "=", 2),
		clientv3.Compare(clientv3.CreateRevision("t2"), ">", 0),
		clientv3.Compare(clientv3.ModRevision("t2"), "<", 1000),
		clientv3.Compare(clientv3.LeaseValue("t2"), "=", clientv3.NoLease),
	).Then(
		clientv3.OpPut("t1", "s1", clientv3.WithPrevKV()),
		clientv3.OpGet("t", clientv3.WithPrefix()),
		clientv3.OpDelete("t2", clientv3.WithPrevKV()),
		clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("t4", "nested")}, nil),
	).Else(clientv3.OpPut("t1", "f1")).Commit()
	r.step("txn: every compare holds", "%s", txn(r, t, err))
	t, err = cli.Txn(c).If(clientv3.Compare(clientv3.Value("t1"), "!=", "s1")).
		Then(clientv3.OpPut("t1", "no")).
		Else(clientv3.OpPut("t1", "f2"), clientv3.OpGet("t1")).Commit()
	r.step("txn: a compare fails", "%s", txn(r, t, err))
	t, err = cli.Txn(c).If(clientv3.Compare(clientv3.Version("t"), ">", 0).WithPrefix()).
		Then(clientv3.OpGet("t", clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
	r.step("txn: a compare over a prefix", "%s", txn(r, t, err))
	t, err = cli.Txn(c).If(clientv3.Compare(clientv3.Version("t-missing"), "=", 0)).
		Then(clientv3.OpPut("t-missing", "now")).Commit()
	r.step("txn: version compare on a missing key", "%s", txn(r, t, err))
	t, err = cli.Txn(c).Then(clientv3.OpPut("d", "1"), clientv3.OpPut("d", "2")).Commit()
	r.step("txn: a duplicate key", "%s", txn(r, t, err))
	t, err = cli.Txn(c).Then(clientv3.OpGet("a", clientv3.WithRev(1000))).Commit()
	r.step("txn: a read at a future revision", "%s", txn(r, t, err))
	many := []clientv3.Op{}
	for i := 0; i < 129; i++ {
		many = append(many, clientv3.OpPut(fmt.Sprintf("k%d", i), "v"))
	}
	t, err = cli.Txn(c).Then(many...).Commit()
	r.step("txn: too many operations", "%s", txn(r, t, err))
}

func leaseScenario(cli *clientv3.Client, r *recorder) {
	c, cancel := ctx()
	defer cancel()
	grant, err := cli.Grant(c, 60)
	if err != nil {
		r.step("lease: grant", "%s", errText(err))
		return
	}
	r.step("lease: grant", "id=%s ttl=%d", r.lease(grant.ID), grant.TTL)
	p, err := cli.Put(c, "lk1", "v", clientv3.WithLease(grant.ID))
	r.step("lease: put with the lease", "%s", put(r, p, err))
	p, err = cli.Put(c, "lk2", "v", clientv3.WithLease(grant.ID))
	r.step("lease: put a second key", "%s", put(r, p, err))
	p, err = cli.Put(c, "lk1", "w", clientv3.WithIgnoreLease())
	r.step("lease: put ignore_lease keeps the lease", "%s", put(r, p, err))
	p, err = cli.Put(c, "lk3", "v", clientv3.WithLease(0x1234abcd))
	r.step("lease: put with an unknown lease", "%s", put(r, p, err))
	ttl, err := cli.TimeToLive(c, grant.ID, clientv3.WithAttachedKeys())
	if err == nil {
		keys := []string{}
		for _, k := range ttl.Keys {
			keys = append(keys, string(k))
		}
		sort.Strings(keys)
		r.step("lease: time to live with keys", "id=%s granted=%d ttl>0=%v keys=%v", r.lease(ttl.ID), ttl.GrantedTTL,
			ttl.TTL > 0, keys)
	} else {
		r.step("lease: time to live with keys", "%s", errText(err))
	}
	once, err := cli.KeepAliveOnce(c, grant.ID)
	if err == nil {
		r.step("lease: keep alive once", "id=%s ttl=%d", r.lease(once.ID), once.TTL)
	} else {
		r.step("lease: keep alive once", "%s", errText(err))
	}
	// KeepAlive renews every TTL/3: a 3 s lease is renewed every second.
	kgrant, err := cli.Grant(c, 3)
	answers := 0
	if err == nil {
		r.lease(kgrant.ID)
		kctx, kcancel := context.WithCancel(context.Background())
		var ch <-chan *clientv3.LeaseKeepAliveResponse
		ch, err = cli.KeepAlive(kctx, kgrant.ID)
		deadline := time.After(15 * time.Second)
	loop:
		for err == nil && answers < 3 {
			select {
			case resp, ok := <-ch:
				if !ok {
					break loop
				}
				if resp.ID == kgrant.ID && resp.TTL == 3 {
					answers++
				}
			case <-deadline:
				break loop
			}
		}
		kcancel()
	}
	r.step("lease: keep alive streams answers", "%s answers=%d", errText(err), answers)
	c, cancel = ctx()
	defer cancel()
	list, err := cli.Leases(c)
	if err == nil {
		ids := []string{}
		for _, l := range list.Leases {
			ids = append(ids, r.lease(l.ID))
		}
		sort.Strings(ids)
		r.step("lease: list", "%v", ids)
		_, _ = cli.Revoke(c, kgrant.ID)
	} else {
		r.step("lease: list", "%s", errText(err))
	}
	rev, err := cli.Revoke(c, grant.ID)
	if err == nil {
		r.step("lease: revoke", "rev=%d", rev.Header.Revision)
	} else {
		r.step("lease: revoke", "%s", errText(err))
	}
	g, err := cli.Get(c, "lk", clientv3.WithPrefix())
	r.step("lease: its keys are gone", "%s", get(r, g, err))
	ttl, err = cli.TimeToLive(c, grant.ID)
	if err == nil {
		r.step("lease: time to live of a revoked lease", "ttl=%d granted=%d", ttl.TTL, ttl.GrantedTTL)
	} else {
		r.step("lease: time to live of a revoked lease", "%s", errText(err))
	}
	_, err = cli.Revoke(c, grant.ID)
	r.step("lease: revoke again", "%s", errText(err))
	_, err = cli.KeepAliveOnce(c, grant.ID)
	r.step("lease: keep alive once a revoked lease", "%s", errText(err))

	// A short lease expires by itself and takes its key with it.
	c, cancel = ctx()
	defer cancel()
	short, err := cli.Grant(c, 2)
	if err != nil {
		r.step("lease: a short lease expires", "%s", errText(err))
		return
	}
	r.lease(short.ID)
	_, err = cli.Put(c, "short", "v", clientv3.WithLease(short.ID))
	gone := false
	deadline := time.Now().Add(15 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		g, gerr := cli.Get(c, "short")
		if gerr == nil && len(g.Kvs) == 0 {
			gone = true
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.step("lease: a short lease expires", "%s ttl=%d gone=%v", errText(err), short.TTL, gone)
}

func concurrencyScenario(cli *clientv3.Client, r *recorder) {
	s1, err := concurrency.NewSession(cli, concurrency.WithTTL(30))
	if err != nil {
		r.step("concurrency: sessions", "%s", errText(err))
		return
	}
	defer s1.Close()
	s2, err := concurrency.NewSession(cli, concurrency.WithTTL(30))
	if err != nil {
		r.step("concurrency: sessions", "%s", errText(err))
		return
	}
	defer s2.Close()
	r.step("concurrency: sessions", "s1=%s s2=%s", r.lease(s1.Lease()), r.lease(s2.Lease()))

	c, cancel := ctx()
	defer cancel()
	m1 := concurrency.NewMutex(s1, "/lock")
	m2 := concurrency.NewMutex(s2, "/lock")
	err = m1.Lock(c)
	r.step("mutex: lock", "%s key=%s", errText(err), m1.Key())
	err = m2.TryLock(c)
	r.step("mutex: try lock while held", "%s", errText(err))
	t, err := cli.Txn(c).If(m1.IsOwner()).Then(clientv3.OpPut("guarded", "by m1")).Commit()
	r.step("mutex: a txn guarded by ownership", "%s", txn(r, t, err))
	// m2 waits for the lock in Lock; m1 unlocks; m2 gets it.
	locked := make(chan error, 1)
	go func() {
		lc, lcancel := ctx()
		defer lcancel()
		locked <- m2.Lock(lc)
	}()
	waitForKeys(cli, "/lock/", 2)
	err = m1.Unlock(c)
	r.step("mutex: unlock", "%s", errText(err))
	select {
	case err = <-locked:
		r.step("mutex: the waiter gets the lock", "%s key=%s", errText(err), m2.Key())
	case <-time.After(20 * time.Second):
		r.step("mutex: the waiter gets the lock", "timeout")
	}
	err = m2.Unlock(c)
	r.step("mutex: the waiter unlocks", "%s", errText(err))

	// Election: e1 leads, proclaims, e2 campaigns and takes over when e1 resigns.
	e1 := concurrency.NewElection(s1, "/elect")
	e2 := concurrency.NewElection(s2, "/elect")
	observer := concurrency.NewElection(s2, "/elect")
	octx, ocancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ocancel()
	err = e1.Campaign(c, "e1")
	r.step("election: campaign", "%s key=%s", errText(err), e1.Key())
	observed := observer.Observe(octx)
	l, err := e1.Leader(c)
	r.step("election: leader", "%s", get(r, l, err))
	err = e1.Proclaim(c, "e1 again")
	r.step("election: proclaim", "%s", errText(err))
	campaigned := make(chan error, 1)
	go func() {
		cc, ccancel := ctx()
		defer ccancel()
		campaigned <- e2.Campaign(cc, "e2")
	}()
	waitForKeys(cli, "/elect/", 2)
	err = e1.Resign(c)
	r.step("election: resign", "%s", errText(err))
	select {
	case err = <-campaigned:
		r.step("election: the second candidate wins", "%s", errText(err))
	case <-time.After(20 * time.Second):
		r.step("election: the second candidate wins", "timeout")
	}
	l, err = e2.Leader(c)
	r.step("election: leader after resign", "%s", get(r, l, err))
	// Observe may coalesce changes: what is compared is that it saw only these
	// leaders, in this order, ending with e2.
	values := []string{}
	deadline := time.After(10 * time.Second)
observe:
	for {
		select {
		case resp, ok := <-observed:
			if !ok {
				break observe
			}
			if len(resp.Kvs) > 0 {
				values = append(values, string(resp.Kvs[0].Value))
			}
			if len(values) > 0 && values[len(values)-1] == "e2" {
				break observe
			}
		case <-deadline:
			break observe
		}
	}
	order := map[string]int{"e1": 1, "e1 again": 2, "e2": 3}
	ordered := len(values) > 0 && values[len(values)-1] == "e2"
	for i, v := range values {
		if order[v] == 0 || (i > 0 && order[v] < order[values[i-1]]) {
			ordered = false
		}
	}
	r.step("election: observed leaders", "in order, ending with e2: %v", ordered)
	err = e2.Resign(c)
	r.step("election: the second resigns", "%s", errText(err))

	// STM: concurrent transfers between two accounts keep the total.
	_, err = cli.Put(c, "acct/a", "100")
	if err == nil {
		_, err = cli.Put(c, "acct/b", "100")
	}
	r.step("stm: accounts", "%s", errText(err))
	for _, iso := range []struct {
		name  string
		level concurrency.Isolation
	}{
		{"serializable snapshot", concurrency.SerializableSnapshot},
		{"serializable", concurrency.Serializable},
		{"repeatable reads", concurrency.RepeatableReads},
	} {
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				sc, scancel := ctx()
				defer scancel()
				_, errs[i] = concurrency.NewSTM(cli, func(s concurrency.STM) error {
					var a, b int
					fmt.Sscan(s.Get("acct/a"), &a)
					fmt.Sscan(s.Get("acct/b"), &b)
					s.Put("acct/a", fmt.Sprint(a-5))
					s.Put("acct/b", fmt.Sprint(b+5))
					return nil
				}, concurrency.WithIsolation(iso.level), concurrency.WithAbortContext(sc))
			}(i)
		}
		wg.Wait()
		g, gerr := cli.Get(c, "acct/", clientv3.WithPrefix())
		r.step("stm: four transfers, "+iso.name, "errors=%v accounts=%s", errs, get(r, g, gerr))
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(30))
	if err == nil {
		err = sess.Close()
	}
	r.step("concurrency: a session closed revokes its lease", "%s", errText(err))
}

// waitForKeys waits (bounded) until `n` keys exist under `prefix`.
func waitForKeys(cli *clientv3.Client, prefix string, n int64) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		c, cancel := ctx()
		g, err := cli.Get(c, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		if err == nil && g.Count >= n {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func namespaceScenario(cli *clientv3.Client, r *recorder) {
	c, cancel := ctx()
	defer cancel()
	nkv := namespace.NewKV(cli.KV, "ns/")
	p, err := nkv.Put(c, "x", "1", clientv3.WithPrevKV())
	r.step("namespace: put", "%s", put(r, p, err))
	p, err = nkv.Put(c, "y", "2")
	r.step("namespace: put a second key", "%s", put(r, p, err))
	g, err := nkv.Get(c, "x")
	r.step("namespace: get", "%s", get(r, g, err))
	g, err = nkv.Get(c, "", clientv3.WithPrefix())
	r.step("namespace: get everything in the namespace", "%s", get(r, g, err))
	g, err = nkv.Get(c, "", clientv3.WithFromKey())
	r.step("namespace: get from the empty key", "%s", get(r, g, err))
	g, err = cli.Get(c, "ns/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	r.step("namespace: the raw keys", "%s", get(r, g, err))
	t, err := nkv.Txn(c).If(clientv3.Compare(clientv3.Value("x"), "=", "1")).
		Then(clientv3.OpPut("x", "2"), clientv3.OpGet("", clientv3.WithPrefix())).Commit()
	r.step("namespace: txn", "%s", txn(r, t, err))
	d, err := nkv.Delete(c, "y", clientv3.WithPrevKV())
	r.step("namespace: delete", "%s", del(r, d, err))

	nl := namespace.NewLease(cli.Lease, "ns/")
	grant, err := nl.Grant(c, 60)
	if err == nil {
		r.lease(grant.ID)
		p, err = nkv.Put(c, "leased", "v", clientv3.WithLease(grant.ID))
		r.step("namespace: put with a lease", "%s", put(r, p, err))
		ttl, terr := nl.TimeToLive(c, grant.ID, clientv3.WithAttachedKeys())
		if terr == nil {
			keys := []string{}
			for _, k := range ttl.Keys {
				keys = append(keys, string(k))
			}
			r.step("namespace: the lease's keys, in the namespace", "%v", keys)
		} else {
			r.step("namespace: the lease's keys, in the namespace", "%s", errText(terr))
		}
		_, err = nl.Revoke(c, grant.ID)
	}
	r.step("namespace: lease", "%s", errText(err))

	nw := namespace.NewWatcher(cli.Watcher, "ns/")
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	start, _ := cli.Get(c, "ns/")
	ch := nw.Watch(wctx, "w", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(start.Header.Revision+1))
	_, _ = nkv.Put(c, "w1", "a")
	_, _ = cli.Put(c, "other", "not in the namespace")
	_, _ = nkv.Put(c, "w1", "b")
	_, _ = nkv.Delete(c, "w1")
	r.step("namespace: watch", "%s", collect(r, ch, 3, 15*time.Second))
}

func watchScenario(cli *clientv3.Client, r *recorder) {
	c, cancel := ctx()
	defer cancel()
	wctx, wcancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer wcancel()
	g, err := cli.Get(c, "w/")
	if err != nil {
		r.step("watch: start", "%s", errText(err))
		return
	}
	next := g.Header.Revision + 1

	all := cli.Watch(wctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(next), clientv3.WithPrevKV(),
		clientv3.WithCreatedNotify())
	noPut := cli.Watch(wctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(next), clientv3.WithFilterPut())
	noDelete := cli.Watch(wctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(next), clientv3.WithFilterDelete())
	one := cli.Watch(wctx, "w/1", clientv3.WithRev(next), clientv3.WithFragment())
	_, _ = cli.Put(c, "w/1", "a")
	_, _ = cli.Put(c, "w/2", "b")
	_, _ = cli.Put(c, "w/1", "c")
	_, _ = cli.Delete(c, "w/", clientv3.WithPrefix())
	_, _ = cli.Txn(c).Then(clientv3.OpPut("w/3", "t"), clientv3.OpPut("w/4", "t")).Commit()
	r.step("watch: a prefix with prev_kv", "%s", collect(r, all, 7, 15*time.Second))
	r.step("watch: no puts", "%s", collect(r, noPut, 2, 15*time.Second))
	r.step("watch: no deletes", "%s", collect(r, noDelete, 5, 15*time.Second))
	r.step("watch: one key, fragment allowed", "%s", collect(r, one, 3, 15*time.Second))

	// Progress: a watcher with nothing to report asks for progress and is told the
	// store's revision.
	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pcancel()
	pctx = clientv3.WithRequireLeader(pctx)
	quiet := cli.Watch(pctx, "quiet/", clientv3.WithPrefix(), clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	select {
	case resp := <-quiet:
		r.step("watch: created", "created=%v rev=%d", resp.Created, resp.Header.Revision)
	case <-time.After(10 * time.Second):
		r.step("watch: created", "timeout")
	}
	err = cli.RequestProgress(pctx)
	progress := "timeout"
	select {
	case resp := <-quiet:
		progress = fmt.Sprintf("progress=%v rev=%d events=%d", resp.IsProgressNotify(), resp.Header.Revision, len(resp.Events))
	case <-time.After(10 * time.Second):
	}
	r.step("watch: request progress", "%s %s", errText(err), progress)

	// Compaction: a watch from below it is canceled with the compacted revision; the
	// watcher resumes from there and sees the history kept.
	now, err := cli.Get(c, "w/")
	if err != nil {
		r.step("watch: compact", "%s", errText(err))
		return
	}
	compactAt := now.Header.Revision - 3
	_, err = cli.Compact(c, compactAt, clientv3.WithCompactPhysical())
	r.step("watch: compact", "%s at=%d", errText(err), compactAt)
	old := cli.Watch(wctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(next))
	var compactRev int64
	select {
	case resp, ok := <-old:
		if ok {
			compactRev = resp.CompactRevision
			r.step("watch: from below the compaction", "canceled=%v compact_revision=%d err=%s events=%d",
				resp.Canceled, resp.CompactRevision, errText(resp.Err()), len(resp.Events))
		} else {
			r.step("watch: from below the compaction", "closed")
		}
	case <-time.After(10 * time.Second):
		r.step("watch: from below the compaction", "timeout")
	}
	if compactRev > 0 {
		// From the compacted revision: w/2, w/1, the delete (2 events), the txn (2) and
		// the put after it.
		resumed := cli.Watch(wctx, "", clientv3.WithPrefix(), clientv3.WithRev(compactRev))
		_, _ = cli.Put(c, "w/after", "compaction")
		r.step("watch: resumed from the compacted revision", "%s", collect(r, resumed, 7, 15*time.Second))
	}
	g, err = cli.Get(c, "w/", clientv3.WithPrefix(), clientv3.WithRev(compactAt-1))
	r.step("watch: get below the compaction", "%s", get(r, g, err))
	_, err = cli.Compact(c, compactAt)
	r.step("watch: compact again at the same revision", "%s", errText(err))
	if errors.Is(err, context.DeadlineExceeded) {
		fmt.Fprintln(os.Stderr, "go-client: deadline exceeded")
	}
}
