module github.com/fp4moe/fp4moe

go 1.26

require gonum.org/v1/gonum v0.17.0
