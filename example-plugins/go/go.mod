module plughost.example/name-policy

go 1.24
