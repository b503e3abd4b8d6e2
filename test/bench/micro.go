package main

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/liquidmetal-go/liquidmetal/internal/testenv"
)

// microResult is one line of `go test -bench` output, or a package whose
// benchmarks did not run (err).
type microResult struct {
	pkg, name   string
	iters       int64
	nsPerOp     float64
	bytesPerOp  string
	allocsPerOp string
	extra       []string
	err         string
}

// microBenchmarks runs the Go benchmarks of every package of internal/ and
// cmd/ that has some, one package at a time.
func (b *bench) microBenchmarks(ctx context.Context) error {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	pkgs, err := benchmarkPackages(root)
	if err != nil {
		return err
	}
	for _, p := range pkgs {
		b.step("  go test -bench . ./%s", p)
		cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", "^$", "-bench", ".",
			"-benchtime", b.o.benchtime, "-timeout", "5m", "./"+p)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		res := parseBench(p, out)
		if err != nil {
			res = append(res, microResult{pkg: p, err: firstLines(string(out), 3)})
		}
		b.micro = append(b.micro, res...)
	}
	return nil
}

// benchmarkPackages lists the folders (relative to root) under internal/
// and cmd/ holding a test file that declares a benchmark.
func benchmarkPackages(root string) ([]string, error) {
	var pkgs []string
	for _, top := range []string{"internal", "cmd"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() && (e.Name() == "testdata" || strings.HasPrefix(e.Name(), ".")) {
				return filepath.SkipDir
			}
			if e.IsDir() || !strings.HasSuffix(e.Name(), "_test.go") {
				return nil
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if bytes.Contains(src, []byte("\nfunc Benchmark")) {
				rel, err := filepath.Rel(root, filepath.Dir(path))
				if err != nil {
					return err
				}
				if !slices.Contains(pkgs, rel) {
					pkgs = append(pkgs, rel)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	slices.Sort(pkgs)
	return pkgs, nil
}

// parseBench reads the result lines of `go test -bench` output:
// "BenchmarkX-2  N  V ns/op  V B/op  V allocs/op  V unit...".
func parseBench(pkg string, out []byte) []microResult {
	var res []microResult
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		iters, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		r := microResult{pkg: pkg, name: f[0], iters: iters, bytesPerOp: "-", allocsPerOp: "-"}
		for i := 2; i+1 < len(f); i += 2 {
			v, unit := f[i], f[i+1]
			switch unit {
			case "ns/op":
				r.nsPerOp, _ = strconv.ParseFloat(v, 64)
			case "B/op":
				r.bytesPerOp = v
			case "allocs/op":
				r.allocsPerOp = v
			default:
				r.extra = append(r.extra, v+" "+unit)
			}
		}
		res = append(res, r)
	}
	return res
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, " / ")
}
