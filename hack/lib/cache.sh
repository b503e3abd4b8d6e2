# shellcheck shell=bash
# The shared skeleton of the hack/build-*.sh scripts that build tools from the
# Go module proxy into bin/cache/<name>-<version>/: silent when cached, one
# build at a time behind a lock, one line on stderr when building, the build's
# output in build.log (shown on failure), the folder printed with -p.
#
# A script sources this file, sets `dir`, defines `cached` (true when every
# output is in place) and calls, in order:
#   cache_enter "$@"     exit 0 when cached, else lock and re-check
#   cache_begin NAME MSG announce the build on stderr and start build.log
#   ...                  the build, calling `fail WHAT` when a step fails
#   cache_finish         print the folder with -p

cache_print=false

# cache_done exits successfully, printing the folder when -p was given.
cache_done() {
  if $cache_print; then echo "$dir"; fi
  exit 0
}

# cache_enter returns when a build is needed and this caller holds the lock;
# parallel callers (test packages, make targets) wait for one build.
cache_enter() {
  [ "${1:-}" = "-p" ] && cache_print=true
  cached && cache_done
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock 9
  cached && cache_done
  return 0
}

# cache_begin NAME MSG: NAME prefixes failure messages, MSG is the one line
# said on stderr. Sets `log` and exports the settings the throwaway modules
# build with.
cache_begin() {
  cache_name=$1
  echo "$2" >&2
  log="$dir/build.log"
  : >"$log"
  export GOWORK=off GOFLAGS="-mod=mod -buildvcs=false"
}

# fail WHAT reports a failed step with the end of build.log and exits.
fail() {
  echo "$cache_name: $1 failed; last lines of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
}

# cache_module DIR MODULE makes DIR an empty throwaway Go module and enters it.
cache_module() {
  rm -rf "$1"
  mkdir -p "$1"
  cd "$1"
  printf 'module %s\n\ngo 1.26\n' "$2" >go.mod
}

cache_finish() {
  if $cache_print; then echo "$dir"; fi
}
