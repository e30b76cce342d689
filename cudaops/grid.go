package cudaops

// waveFill is the share of its waves' block slots that a grid of blocks fills, at wave blocks a
// wave (resident blocks per SM times SMs): blocks / (⌈blocks / wave⌉ · wave). 0 for an empty
// grid or wave.
func waveFill(blocks, wave int) float64 {
	if blocks <= 0 || wave <= 0 {
		return 0
	}
	return float64(blocks) / float64((blocks+wave-1)/wave*wave)
}

// fillsAsWell reports whether a grid of a blocks at aPerSM resident blocks an SM fills its waves
// at least as well as a grid of b blocks at bPerSM, on sms SMs.
func fillsAsWell(a, aPerSM, b, bPerSM, sms int) bool {
	return waveFill(a, aPerSM*sms) >= waveFill(b, bPerSM*sms)
}
