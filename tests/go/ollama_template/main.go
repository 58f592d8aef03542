// Renders an Ollama Modelfile TEMPLATE the way Ollama does: Go's text/template executed on
// values with System, Messages (Role, Content), Prompt and Response. sftchat's tests pipe
// {"template", "system", "messages": [{"role", "content"}]} in and compare what comes out
// with the prompt sftchat trains on. Standard library only: it builds offline.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Values struct {
	System   string
	Messages []Message
	Prompt   string
	Response string
}

type Input struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []Message `json:"messages"`
}

func main() {
	var input Input
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Parse(input.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(3)
	}
	values := Values{System: input.System, Messages: input.Messages}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		fmt.Fprintln(os.Stderr, "template does not execute:", err)
		os.Exit(4)
	}
}
