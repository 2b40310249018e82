;;; emacs_session.el --- drive eglot + tinymorph.el against the real server, write what happened as JSON  -*- lexical-binding: t; -*-
(require 'json)
(defvar tm-args (json-parse-string (getenv "TINYMORPH_EMACS_TEST") :object-type 'plist))
(defvar tm-out nil)
(defun tm-put (key value) (setq tm-out (plist-put tm-out key value)))
(defun tm-wait (seconds pred)
  (let ((deadline (+ (float-time) seconds)) (result nil))
    (while (and (not (setq result (funcall pred))) (< (float-time) deadline))
      (accept-process-output nil 0.05))
    result))

(condition-case err
    (progn
      (add-to-list 'load-path (plist-get tm-args :config))
      (require 'tinymorph)
      (tm-put :eglot_version (if (boundp 'eglot--version) eglot--version (or (ignore-errors (pkg-info-version-info 'eglot)) "")))
      (setq tinymorph-command (list (plist-get tm-args :python) "-m" "lsp_server"))
      (setq eglot-confirm-server-initiated-edits nil)  ; batch mode cannot answer the y-or-n-p
      (setq tinymorph-initialization-options
            (list :model (plist-get tm-args :model) :sae (plist-get tm-args :sae) :device "cpu"
                  :debounceMs 50 :maxTokens 6 :suggestion :json-false))
      (find-file (plist-get tm-args :doc))
      (tm-put :major_mode (symbol-name major-mode))
      (apply #'eglot (eglot--guess-contact))
      (let ((server (tm-wait 60 #'eglot-current-server)))
        (tm-put :connected (if server t :json-false))
        (tm-put :language_id (eglot--language-id server))
        (tm-put :ready (if (tm-wait 60 (lambda () (equal (plist-get (tinymorph-command "tinymorph.status") :state)
                                                          "ready")))
                           t :json-false))
        (tm-put :keys (if (and tinymorph-mode (keymapp (lookup-key tinymorph-mode-map (kbd "C-c t")))) t :json-false))
        (tm-wait 60 (lambda () (plist-get (tinymorph-command "tinymorph.document"
                                                            `(:uri ,(eglot--path-to-uri (buffer-file-name))))
                                          :annotatedVersion)))
        ;; hover, as eldoc asks it
        (goto-char (point-min))
        (search-forward "rain")
        (backward-char 2)
        (let ((hover (jsonrpc-request server :textDocument/hover (eglot--TextDocumentPositionParams))))
          (tm-put :hover (plist-get (plist-get hover :contents) :value)))
        ;; code actions on the second line's first word
        (goto-char (point-min))
        (forward-line 2)
        (let* ((beg (point)) (end (+ beg 7))
               (before (buffer-substring-no-properties beg (line-end-position)))
               (actions (append (jsonrpc-request
                                 server :textDocument/codeAction
                                 `(:textDocument ,(eglot--TextDocumentIdentifier)
                                   :range (:start ,(eglot--pos-to-lsp-position beg)
                                           :end ,(eglot--pos-to-lsp-position end))
                                   :context (:diagnostics [])))
                                nil))
               (titles (mapcar (lambda (a) (plist-get a :title)) actions))
               (rewrite (cl-find-if (lambda (a) (string-prefix-p "Rewrite selection" (plist-get a :title))) actions))
               (amplify (cl-find-if (lambda (a) (string-prefix-p "Amplify feature" (plist-get a :title))) actions)))
          (tm-put :titles (vconcat titles))
          (let ((cmd (plist-get rewrite :command)))
            (eglot-execute-command server (intern (plist-get cmd :command)) (plist-get cmd :arguments)))
          (tm-put :rewrite_applied
                  (if (tm-wait 30 (lambda () (not (equal before (buffer-substring-no-properties
                                                                  (save-excursion (goto-char (point-min))
                                                                                  (forward-line 2) (point))
                                                                  (save-excursion (goto-char (point-min))
                                                                                  (forward-line 2)
                                                                                  (line-end-position)))))))
                      t :json-false))
          (let ((cmd (plist-get amplify :command)))
            (eglot-execute-command server (intern (plist-get cmd :command)) (plist-get cmd :arguments)))
          (tm-put :steering (length (plist-get (tinymorph-command "tinymorph.steer.list") :steering))))
        (let ((doc (tinymorph-command "tinymorph.document" `(:uri ,(eglot--path-to-uri (buffer-file-name))))))
          (tm-put :server_text_matches (if (equal (plist-get doc :text)
                                                  (buffer-substring-no-properties (point-min) (point-max)))
                                           t :json-false)))
        (tm-put :ok t)))
  (error (tm-put :ok :json-false) (tm-put :error (format "%S" err))))

(with-temp-file (plist-get tm-args :result) (insert (json-encode tm-out)))
(kill-emacs 0)
