// Package registryauth owns how flintlockd reaches and authenticates to
// image registries: credentials per registry host from a docker-style
// config.json (re-read when the file changes, so an operator can rotate
// them), containerd's certs.d/hosts.toml folders (mirrors, CA files,
// client certificates, skip_verify, plain HTTP), and a list of hosts
// reached over plain HTTP. It builds, per pull, a containerd docker
// resolver from them, and turns a registry's refusal (401, 403) into an
// errdefs kind naming the registry.
//
// hosts.toml is read by containerd's own library
// (core/remotes/docker/config), so its format is containerd's:
// https://github.com/containerd/containerd/blob/main/docs/hosts.md.
package registryauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
)

// Options configures Registries.
type Options struct {
	// ConfigFile is a docker-style config.json ("auths" only). Empty means
	// no credentials. It must exist when New is called; later it may be
	// replaced, changed or removed, and is re-read when its modification
	// time, size or inode change.
	ConfigFile string
	// HostsDir is a containerd certs.d-style folder:
	// <HostsDir>/<host>/hosts.toml (or <host>_<port>_ for "host:port",
	// or _default). Empty means every registry is reached directly.
	HostsDir string
	// PlainHTTP lists registry hosts ("host:port") reached over plain
	// HTTP when no hosts.toml names their server. Loopback registries
	// (localhost, 127.0.0.0/8, ::1) always are.
	PlainHTTP []string
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
}

// Registries hands out resolvers configured from Options. It is safe for
// concurrent use.
type Registries struct {
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	loaded fileStamp             // of the config file as last parsed
	creds  map[string]credential // by normalized host
}

// credential is what the authorizer sends to one registry host: a user
// name and password, or (empty user name) an identity token that is
// exchanged for a bearer token.
type credential struct {
	username, secret string
}

// fileStamp tells whether a file changed since it was read.
type fileStamp struct {
	exists bool
	mtime  time.Time
	size   int64
	ino    uint64
}

// New checks opts (the config file parses, the hosts folder is a folder)
// and returns Registries using them.
func New(opts Options) (*Registries, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &Registries{opts: opts, log: log.With("component", "registryauth")}
	if opts.HostsDir != "" {
		fi, err := os.Stat(opts.HostsDir)
		if err != nil {
			return nil, fmt.Errorf("registry hosts folder: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("registry hosts folder %s is not a folder: %w", opts.HostsDir, errdefs.ErrInvalidArgument)
		}
	}
	if opts.ConfigFile != "" {
		if _, err := os.Stat(opts.ConfigFile); err != nil {
			return nil, fmt.Errorf("registry config: %w", err)
		}
		r.mu.Lock()
		err := r.reloadLocked()
		r.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Resolver returns the resolver of one pull. Hosts are configured once
// per resolver (connections and tokens are shared by the pull's requests);
// hosts.toml files and the config file are read afresh for every resolver.
//
// A registry refusing the pull's credentials (or their absence) makes
// Resolve fail with errdefs.ErrUnauthenticated (HTTP 401) or
// errdefs.ErrPermissionDenied (HTTP 403), naming the registry host.
func (r *Registries) Resolver(ctx context.Context) remotes.Resolver {
	return &resolver{Resolver: docker.NewResolver(docker.ResolverOptions{Hosts: onePerHost(r.Hosts(ctx))})}
}

// Hosts returns containerd's registry host configuration: the hosts.toml
// of each registry when there is one, plain HTTP for loopback and
// Options.PlainHTTP hosts, and an authorizer using Credentials.
func (r *Registries) Hosts(ctx context.Context) docker.RegistryHosts {
	return func(host string) ([]docker.RegistryHost, error) {
		opts := config.HostOptions{Credentials: r.Credentials}
		if r.opts.HostsDir != "" {
			opts.HostDir = config.HostDirFromRoot(r.opts.HostsDir)
		}
		if r.plainHTTP(host) {
			opts.DefaultScheme = "http"
		}
		hosts, err := config.ConfigureHosts(ctx, opts)(host)
		if err != nil {
			return nil, fmt.Errorf("registry %s: hosts configuration: %w", host, err)
		}
		for i := range hosts {
			if hosts[i].Authorizer != nil {
				hosts[i].Authorizer = hostAuthorizer{hosts[i].Authorizer}
			}
		}
		return hosts, nil
	}
}

// plainHTTP tells whether host is reached over plain HTTP by default.
func (r *Registries) plainHTTP(host string) bool {
	for _, h := range r.opts.PlainHTTP {
		if strings.EqualFold(h, host) {
			return true
		}
	}
	return docker.IsLocalhost(host)
}

// onePerHost configures each host once for the lifetime of one resolver.
func onePerHost(hosts docker.RegistryHosts) docker.RegistryHosts {
	var mu sync.Mutex
	seen := map[string][]docker.RegistryHost{}
	return func(host string) ([]docker.RegistryHost, error) {
		mu.Lock()
		defer mu.Unlock()
		if h, ok := seen[host]; ok {
			return h, nil
		}
		h, err := hosts(host)
		if err != nil {
			return nil, err
		}
		seen[host] = h
		return h, nil
	}
}

// Credentials returns the credentials for a registry host ("host:port"
// as contacted: a mirror's own host for a mirror), re-reading the config
// file first when it changed. No entry gives empty strings and no error.
// A config file that no longer parses is an error wrapping
// errdefs.ErrFailedPrecondition, so pulls fail until it is fixed.
func (r *Registries) Credentials(host string) (username, secret string, err error) {
	if r.opts.ConfigFile == "" {
		return "", "", nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.reloadLocked(); err != nil {
		return "", "", err
	}
	c, ok := r.creds[normalizeHost(host)]
	if !ok {
		r.log.Debug("no registry credentials for host", "host", host)
		return "", "", nil
	}
	r.log.Debug("using registry credentials", "host", host, "username", c.username)
	return c.username, c.secret, nil
}

// reloadLocked re-reads the config file when it changed since the last
// successful read. A removed file means no credentials.
func (r *Registries) reloadLocked() error {
	file := r.opts.ConfigFile
	st, err := stampOf(file)
	if err != nil {
		return fmt.Errorf("registry config %s: %w: %w", file, errdefs.ErrFailedPrecondition, err)
	}
	if st == r.loaded && r.creds != nil {
		return nil
	}
	if !st.exists {
		r.log.Warn("registry config file is gone; pulling without credentials", "file", file)
		r.creds, r.loaded = map[string]credential{}, st
		return nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("registry config %s: %w: %w", file, errdefs.ErrFailedPrecondition, err)
	}
	creds, warnings, err := parseConfig(b)
	if err != nil {
		return fmt.Errorf("registry config %s: %w: %w", file, errdefs.ErrFailedPrecondition, err)
	}
	for _, w := range warnings {
		r.log.Warn(w, "file", file)
	}
	hosts := make([]string, 0, len(creds))
	for h := range creds {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	r.log.Info("registry credentials loaded", "file", file, "hosts", hosts)
	r.creds, r.loaded = creds, st
	return nil
}

func stampOf(file string) (fileStamp, error) {
	fi, err := os.Stat(file)
	if errors.Is(err, os.ErrNotExist) {
		return fileStamp{}, nil
	}
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{exists: true, mtime: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}

// dockerConfig is the part of docker's config.json flintlockd reads.
type dockerConfig struct {
	Auths       map[string]authEntry `json:"auths"`
	CredHelpers map[string]string    `json:"credHelpers"`
	CredsStore  string               `json:"credsStore"`
}

type authEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// parseConfig returns the credentials of a config.json by normalized host,
// and warnings for what it ignores. Errors never quote secrets.
func parseConfig(b []byte) (map[string]credential, []string, error) {
	var cfg dockerConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, nil, fmt.Errorf("not a docker config.json: %w", err)
	}
	var warnings []string
	if cfg.CredsStore != "" || len(cfg.CredHelpers) > 0 {
		warnings = append(warnings, "registry config: credsStore and credHelpers are not supported and are ignored; put the credentials in auths")
	}
	keys := make([]string, 0, len(cfg.Auths))
	for k := range cfg.Auths {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	creds := map[string]credential{}
	for _, key := range keys {
		e := cfg.Auths[key]
		host := normalizeHost(key)
		if host == "" {
			return nil, nil, fmt.Errorf("auths key %q names no registry host", key)
		}
		var c credential
		switch {
		case e.IdentityToken != "":
			c = credential{secret: e.IdentityToken}
		case e.Auth != "":
			raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(e.Auth))
			if err != nil {
				return nil, nil, fmt.Errorf("auths[%q].auth is not base64", key)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok || user == "" {
				return nil, nil, fmt.Errorf("auths[%q].auth is not base64 of user:password", key)
			}
			c = credential{username: user, secret: pass}
		case e.Username != "" || e.Password != "":
			c = credential{username: e.Username, secret: e.Password}
		case e.RegistryToken != "":
			warnings = append(warnings, fmt.Sprintf("registry config: auths[%q].registrytoken is not supported; ignored", key))
			continue
		default:
			warnings = append(warnings, fmt.Sprintf("registry config: auths[%q] holds no credentials; ignored", key))
			continue
		}
		if _, dup := creds[host]; dup {
			warnings = append(warnings, fmt.Sprintf("registry config: auths[%q] names host %s again; the first entry wins", key, host))
			continue
		}
		creds[host] = c
	}
	return creds, warnings, nil
}

// normalizeHost turns a config.json key ("https://host:port/v1/", "host")
// or a contacted host into the lower-case "host[:port]" both are looked up
// by. Docker Hub's names are one host.
func normalizeHost(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if _, rest, ok := strings.Cut(s, "://"); ok {
		s = rest
	}
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	switch s {
	case "index.docker.io", "registry-1.docker.io":
		s = "docker.io"
	}
	return s
}
