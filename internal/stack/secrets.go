package stack

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
)

// secretMount is a directory laid out as the kubelet lays out a mounted Secret:
// each file is a symlink through ..data into a timestamped directory, and an update
// writes a new directory and points ..data at it with one rename (the kubelet's
// AtomicWriter), so a reader sees all old files or all new ones.
type secretMount struct {
	dir    string
	gen    int
	values map[string]string
}

func newSecretMount(dir string) (*secretMount, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &secretMount{dir: dir, values: map[string]string{}}, nil
}

// path is where a file: secret reads name.
func (m *secretMount) path(name string) string { return filepath.Join(m.dir, name) }

// current is a copy of the mount's content.
func (m *secretMount) current() map[string]string { return maps.Clone(m.values) }

// update replaces the whole content of the mount, as a Secret update does.
func (m *secretMount) update(values map[string]string) error {
	m.gen++
	gen := fmt.Sprintf("..2026_11_25_12_00_00.%d", m.gen)
	if err := os.Mkdir(filepath.Join(m.dir, gen), 0o755); err != nil {
		return err
	}
	for name, v := range values {
		if err := os.WriteFile(filepath.Join(m.dir, gen, name), []byte(v+"\n"), 0o644); err != nil {
			return err
		}
	}
	data := filepath.Join(m.dir, "..data")
	old, _ := os.Readlink(data)
	tmp := filepath.Join(m.dir, "..data_tmp")
	if err := os.Symlink(gen, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, data); err != nil {
		return err
	}
	for name := range values {
		link := filepath.Join(m.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				return err
			}
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(m.dir, old)); err != nil {
			return err
		}
	}
	m.values = maps.Clone(values)
	return nil
}
