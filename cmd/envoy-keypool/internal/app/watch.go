package app

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"cdr.dev/slog/v3"
	"github.com/fsnotify/fsnotify"
)

// kubernetesDataLink is the symlink through which Kubernetes swaps every file of a
// mounted ConfigMap or Secret at once: the files are links into ..data, and an
// update points ..data at a new directory (a rename over the link). Watching the
// file itself would miss it, so directories are watched and a change of ..data
// counts as a change of every file in that directory.
const kubernetesDataLink = "..data"

// debounce gathers the burst of events one update makes (a Kubernetes swap, an
// editor's write-and-rename) into one reload.
const debounce = 100 * time.Millisecond

// fileWatcher calls onChange after any of a set of files changed, however it was
// replaced: written in place, renamed over, or swapped through a symlink.
type fileWatcher struct {
	fs       *fsnotify.Watcher
	log      slog.Logger
	onChange func(changed []string)

	mu    sync.Mutex                 // protects files and dirs
	files map[string]map[string]bool // directory → base names watched in it
	dirs  map[string]bool            // directories added to fs
}

func newFileWatcher(log slog.Logger, onChange func(changed []string)) (*fileWatcher, error) {
	fs, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	return &fileWatcher{fs: fs, log: log, onChange: onChange, files: map[string]map[string]bool{}, dirs: map[string]bool{}}, nil
}

// watch makes paths the set of files watched, replacing the previous set (a reload
// may add or drop file: secrets). A directory that cannot be watched is logged and
// skipped: SIGHUP still reloads.
func (w *fileWatcher) watch(paths []string) {
	files := map[string]map[string]bool{}
	add := func(p string) {
		dir, base := filepath.Split(p)
		dir = filepath.Clean(dir)
		if files[dir] == nil {
			files[dir] = map[string]bool{}
		}
		files[dir][base] = true
	}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			continue
		}
		add(abs)
		// A file that is a link elsewhere (other than through ..data) changes where
		// its target lives.
		if target, err := filepath.EvalSymlinks(abs); err == nil && target != abs {
			add(target)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for dir := range files {
		if w.dirs[dir] {
			continue
		}
		if err := w.fs.Add(dir); err != nil {
			w.log.Warn(context.Background(), "cannot watch a directory for changes; SIGHUP still reloads",
				slog.F("dir", dir), slog.Error(err))
			continue
		}
		w.dirs[dir] = true
	}
	for dir := range w.dirs {
		if files[dir] == nil {
			_ = w.fs.Remove(dir)
			delete(w.dirs, dir)
		}
	}
	w.files = files
}

// matches reports the watched file an event is about, if any.
func (w *fileWatcher) matches(ev fsnotify.Event) (string, bool) {
	if ev.Op == fsnotify.Chmod {
		return "", false
	}
	dir, base := filepath.Split(ev.Name)
	dir = filepath.Clean(dir)
	w.mu.Lock()
	defer w.mu.Unlock()
	names := w.files[dir]
	if names[base] {
		return ev.Name, true
	}
	if base == kubernetesDataLink && len(names) > 0 {
		return ev.Name, true
	}
	return "", false
}

// run delivers changes until ctx ends, then closes the watcher.
func (w *fileWatcher) run(ctx context.Context) {
	defer w.fs.Close()
	var (
		timer   *time.Timer
		fire    <-chan time.Time
		changed []string
	)
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case ev, ok := <-w.fs.Events:
			if !ok {
				return
			}
			name, ok := w.matches(ev)
			if !ok {
				continue
			}
			if !slices.Contains(changed, name) {
				changed = append(changed, name)
			}
			if timer == nil {
				timer = time.NewTimer(debounce)
			} else {
				timer.Reset(debounce)
			}
			fire = timer.C
		case err, ok := <-w.fs.Errors:
			if !ok {
				return
			}
			w.log.Warn(ctx, "file watcher error; SIGHUP still reloads", slog.Error(err))
		case <-fire:
			fire = nil
			w.onChange(changed)
			changed = nil
		}
	}
}
