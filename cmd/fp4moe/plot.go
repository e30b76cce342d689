package main

import (
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

const plotUsage = `usage: fp4moe plot [--out DIR] [--format svg|png] [--peers FILE] [--fp8-tflops R] BENCH.csv...

Draws one chart per shape (OUT/SHAPE.svg, or .png): time per call against M, log-log, for every routing
and device in the bench CSV files (fp4moe bench --csv), with the weight floor of each run
(weight bytes of the experts that uniform routing touches over its copy bandwidth), the FP8 compute floor
(2·M·topk·3·K·I FLOPs at R TFLOP/s, drawn when --fp8-tflops is given) and, from --peers, other
implementations' measurements: a CSV with the header shape,M,name,us.
`

// chartRow is one row of a bench CSV.
type chartRow struct {
	device, shape, routing string
	K, I, topk, M          int
	us, floorUS            float64
}

// peerPoint is one measurement of another implementation.
type peerPoint struct {
	shape, name string
	M           int
	us          float64
}

func plotCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, plotUsage) }
	out := fs.String("out", ".", "directory for the charts")
	peersPath := fs.String("peers", "", "CSV of other implementations' times (shape,M,name,us)")
	fp8 := fs.Float64("fp8-tflops", 0, "FP8 matmul rate for the compute floor, TFLOP/s (0: not drawn)")
	format := fs.String("format", "svg", "image format: svg or png")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *format != "svg" && *format != "png" {
		fmt.Fprintf(stderr, "fp4moe plot: unknown format %q (svg or png)\n", *format)
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	var rows []chartRow
	for _, p := range fs.Args() {
		r, err := readBenchCSV(p)
		if err != nil {
			fmt.Fprintf(stderr, "fp4moe plot: %v\n", err)
			return 2
		}
		rows = append(rows, r...)
	}
	var peers []peerPoint
	if *peersPath != "" {
		var err error
		if peers, err = readPeersCSV(*peersPath); err != nil {
			fmt.Fprintf(stderr, "fp4moe plot: %v\n", err)
			return 2
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintf(stderr, "fp4moe plot: %v\n", err)
		return 2
	}
	shapes := map[string][]chartRow{}
	for _, r := range rows {
		shapes[r.shape] = append(shapes[r.shape], r)
	}
	names := make([]string, 0, len(shapes))
	for s := range shapes {
		names = append(names, s)
	}
	sort.Strings(names)
	for _, s := range names {
		path := filepath.Join(*out, s+"."+*format)
		if err := drawShape(path, s, shapes[s], peers, *fp8); err != nil {
			fmt.Fprintf(stderr, "fp4moe plot: %s: %v\n", s, err)
			return 2
		}
		fmt.Fprintln(stdout, path)
	}
	return 0
}

// readBenchCSV reads the columns the charts need from a bench CSV, by header name.
func readBenchCSV(path string) ([]chartRow, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if len(recs) < 2 {
		return nil, fmt.Errorf("%s: no rows", path)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	for _, h := range []string{"device", "shape", "K", "I", "topk", "routing", "M", "median_us", "floor_us"} {
		if _, ok := col[h]; !ok {
			return nil, fmt.Errorf("%s: no column %q (not an fp4moe bench CSV?)", path, h)
		}
	}
	var rows []chartRow
	for n, rec := range recs[1:] {
		if len(rec) != len(recs[0]) {
			return nil, fmt.Errorf("%s: row %d has %d fields, the header %d", path, n+2, len(rec), len(recs[0]))
		}
		r := chartRow{device: rec[col["device"]], shape: rec[col["shape"]], routing: rec[col["routing"]]}
		ints := []struct {
			dst  *int
			name string
		}{{&r.K, "K"}, {&r.I, "I"}, {&r.topk, "topk"}, {&r.M, "M"}}
		for _, c := range ints {
			v, err := strconv.Atoi(rec[col[c.name]])
			if err != nil || v <= 0 {
				return nil, fmt.Errorf("%s: row %d: %s = %q", path, n+2, c.name, rec[col[c.name]])
			}
			*c.dst = v
		}
		floats := []struct {
			dst  *float64
			name string
		}{{&r.us, "median_us"}, {&r.floorUS, "floor_us"}}
		for _, c := range floats {
			v, err := strconv.ParseFloat(rec[col[c.name]], 64)
			if err != nil || !(v > 0) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("%s: row %d: %s = %q", path, n+2, c.name, rec[col[c.name]])
			}
			*c.dst = v
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// readPeersCSV reads shape,M,name,us rows.
func readPeersCSV(path string) ([]peerPoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.Comment = '#'
	recs, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if len(recs) == 0 || strings.Join(recs[0], ",") != "shape,M,name,us" {
		return nil, fmt.Errorf("%s: the header must be shape,M,name,us", path)
	}
	var pts []peerPoint
	for n, rec := range recs[1:] {
		m, err1 := strconv.Atoi(rec[1])
		us, err2 := strconv.ParseFloat(rec[3], 64)
		if err1 != nil || err2 != nil || m <= 0 || !(us > 0) {
			return nil, fmt.Errorf("%s: row %d: M = %q, us = %q", path, n+2, rec[1], rec[3])
		}
		pts = append(pts, peerPoint{shape: rec[0], M: m, name: rec[2], us: us})
	}
	return pts, nil
}

// drawShape writes one log-log chart of time per call against M.
func drawShape(path, shape string, rows []chartRow, peers []peerPoint, fp8 float64) error {
	p := plot.New()
	p.Title.Text = shape + ": whole expert layer per call"
	p.X.Label.Text = "M (tokens)"
	p.Y.Label.Text = "µs per call"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	// One measured series per (device, routing), one weight-floor line per device.
	type key struct{ device, routing string }
	series := map[key]plotter.XYs{}
	floors := map[string]map[int]float64{}
	for _, r := range rows {
		k := key{r.device, r.routing}
		series[k] = append(series[k], plotter.XY{X: float64(r.M), Y: r.us})
		// The weight floor depends on the experts a routing touches: draw uniform routing's.
		if floors[r.device] == nil {
			floors[r.device] = map[int]float64{}
		}
		if _, ok := floors[r.device][r.M]; !ok || r.routing == "uniform" {
			floors[r.device][r.M] = r.floorUS
		}
	}
	keys := make([]key, 0, len(series))
	for k := range series {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].device+keys[i].routing < keys[j].device+keys[j].routing
	})
	for i, k := range keys {
		xy := byX(series[k])
		l, s, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		c := plotColor(i)
		l.Color, s.Color = c, c
		p.Add(l, s)
		p.Legend.Add(fmt.Sprintf("fp4moe, %s routing (%s)", k.routing, k.device), l, s)
	}
	devs := make([]string, 0, len(floors))
	for d := range floors {
		devs = append(devs, d)
	}
	sort.Strings(devs)
	for i, d := range devs {
		var xy plotter.XYs
		for m, f := range floors[d] {
			xy = append(xy, plotter.XY{X: float64(m), Y: f})
		}
		l, err := plotter.NewLine(byX(xy))
		if err != nil {
			return err
		}
		l.Color = plotColor(len(keys) + i)
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(l)
		p.Legend.Add("weight floor, uniform routing (copy bandwidth, "+d+")", l)
	}
	if fp8 > 0 {
		r := rows[0]
		var xy plotter.XYs
		for _, m := range uniqueMs(rows) {
			flops := 2 * float64(m) * float64(r.topk) * 3 * float64(r.K) * float64(r.I)
			xy = append(xy, plotter.XY{X: float64(m), Y: flops / (fp8 * 1e12) * 1e6})
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return err
		}
		l.Color = plotColor(len(keys) + len(devs))
		l.Dashes = []vg.Length{vg.Points(1), vg.Points(2)}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("FP8 compute floor (%.0f TFLOP/s)", fp8), l)
	}
	byName := map[string]plotter.XYs{}
	var peerNames []string
	for _, pt := range peers {
		if pt.shape != shape {
			continue
		}
		if _, ok := byName[pt.name]; !ok {
			peerNames = append(peerNames, pt.name)
		}
		byName[pt.name] = append(byName[pt.name], plotter.XY{X: float64(pt.M), Y: pt.us})
	}
	for i, n := range peerNames {
		s, err := plotter.NewScatter(byName[n])
		if err != nil {
			return err
		}
		s.Shape = draw.CrossGlyph{}
		s.Radius = vg.Points(4)
		s.Color = plotColor(len(keys) + len(devs) + 1 + i)
		p.Add(s)
		p.Legend.Add(n, s)
	}
	if len(keys) == 0 {
		return errors.New("no rows")
	}
	// Log axes need positive ranges with some room, also for a single point.
	p.X.Min, p.X.Max = p.X.Min/2, p.X.Max*2
	p.Y.Min, p.Y.Max = p.Y.Min/2, p.Y.Max*2
	return p.Save(8*vg.Inch, 5.5*vg.Inch, path)
}

func uniqueMs(rows []chartRow) []int {
	seen := map[int]bool{}
	var ms []int
	for _, r := range rows {
		if !seen[r.M] {
			seen[r.M] = true
			ms = append(ms, r.M)
		}
	}
	sort.Ints(ms)
	return ms
}

// byX sorts points by X, so that lines join them in order of M.
func byX(xy plotter.XYs) plotter.XYs {
	sort.Slice(xy, func(a, b int) bool { return xy[a].X < xy[b].X })
	return xy
}

// plotColor is the i-th colour of plotutil's palette.
func plotColor(i int) color.Color { return plotutil.Color(i) }
