package native

import (
	"math"

	"github.com/fp4moe/fp4moe/moe"
)

// Activate computes one row of the activation: with h the 2I values of GEMM1's output for one
// routed row (gate h[:I], up h[I:]) and bias the expert's 2I biases (or nil), it writes the I
// values y, each computed in float64 from the float32 inputs and rounded once to float32:
//
//	silu:        y = g·sigmoid(g)·u,                after g = min(g, L), u = clamp(u, ±L) if clamped
//	swiglustep:  y = min(g·sigmoid(g), 7)·clamp(u, ±7)
//	swigluoai:   y = (u + β)·g·sigmoid(α·g),        after g = min(g, L), u = clamp(u, ±L)
func Activate(y, h, bias []float32, cfg *moe.Config) {
	I := len(y)
	L, clamp := cfg.Limit()
	lim := float64(L)
	alpha, beta := float64(cfg.Alpha), float64(cfg.Beta)
	for j := range y {
		g, u := h[j], h[I+j]
		if bias != nil {
			g += bias[j]
			u += bias[I+j]
		}
		gd, ud := float64(g), float64(u)
		var v float64
		switch cfg.Activation {
		case moe.SiLU:
			if clamp {
				gd, ud = math.Min(gd, lim), clampf(ud, lim)
			}
			v = gd * sigmoid(gd) * ud
		case moe.SwiGLUStep:
			v = math.Min(gd*sigmoid(gd), 7) * clampf(ud, 7)
		case moe.SwiGLUOAI:
			gd, ud = math.Min(gd, lim), clampf(ud, lim)
			v = (ud + beta) * gd * sigmoid(alpha*gd)
		}
		y[j] = float32(v)
	}
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

func clampf(x, l float64) float64 { return math.Max(-l, math.Min(x, l)) }
