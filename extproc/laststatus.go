package extproc

import (
	"sync/atomic"
	"time"
)

// lastStatus is the last upstream status this replica saw for a key and when, to the
// second, for the operator's status page. Every answer reads it; it is written only
// when the status or the second changes, so a hot key costs each core a shared cache
// line read, not a write.
type lastStatus struct {
	packed atomic.Uint64 // status << 40 | unix seconds; 0 when none yet
}

func (l *lastStatus) record(status int, t time.Time) {
	sec := t.Unix()
	if sec < 0 || status <= 0 || status > 999 {
		return
	}
	v := uint64(status)<<40 | uint64(sec)&(1<<40-1)
	if l.packed.Load() != v {
		l.packed.Store(v)
	}
}

func (l *lastStatus) load() (int, time.Time, bool) {
	v := l.packed.Load()
	if v == 0 {
		return 0, time.Time{}, false
	}
	return int(v >> 40), time.Unix(int64(v&(1<<40-1)), 0), true
}

// LastStatus is the last upstream HTTP status this replica saw for key keyID of pool,
// and when (to the second); ok is false when it saw none since the key's targets were
// set. Safe for concurrent use.
func (s *Server) LastStatus(pool, keyID string) (status int, at time.Time, ok bool) {
	t := s.targets.Load().byName[pool]
	if t == nil {
		return 0, time.Time{}, false
	}
	for _, k := range t.keys {
		if k.id == keyID {
			return k.last.load()
		}
	}
	return 0, time.Time{}, false
}
