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
               (amplify (cl-find-if (lambda (a) (equal "refactor.tinymorph.amplify" (plist-get a :kind))) actions)))
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
        ;; write more like the first line: a preset, switched off, renamed, removed
        (goto-char (point-min))
        (let ((made (tinymorph-more-like-this (point-min) (line-end-position) "rain")))
          (tm-put :preset_made (plist-get (plist-get made :preset) :name)))
        (tinymorph-preset-toggle "rain" 'off)
        (tm-put :preset_enabled (plist-get (aref (plist-get (tinymorph-command "tinymorph.preset.list") :presets) 0)
                                           :enabled))
        (tm-put :preset_message (tinymorph-preset-rename "rain" "harbour"))  ; what the echo area shows
        (tm-put :preset_names (vconcat (tinymorph--preset-names)))
        (tinymorph-preset-remove "harbour")
        (tm-put :presets_left (length (tinymorph--preset-names)))
        (tm-put :preset_error (condition-case e (progn (tinymorph-more-like-this (point-min) (+ (point-min) 3)) "none")
                                (error (error-message-string e))))
        ;; features by example on the first line: the first feature, then "Watch"
        (let* ((end (save-excursion (goto-char (point-min)) (line-end-position)))
               (watched (tinymorph-features-by-example
                         (point-min) end
                         (lambda (prompt names)
                           (if (string-prefix-p "Most specific" prompt) (car names)
                             (cl-find-if (lambda (n) (string-prefix-p "Watch" n)) names)))))
               (feature (plist-get (aref (plist-get watched :watch) 0) :feature)))
          (tm-put :example_watched (length (plist-get watched :watch)))
          ;; a low threshold: flymake shows the flagged sentences
          (tinymorph-watch feature 0.001 "warning" "watch this")
          (tm-put :flymake (if (tm-wait 30 (lambda () (cl-some (lambda (d) (string-match-p "watch this"
                                                                                              (flymake-diagnostic-text d)))
                                                                (flymake-diagnostics))))
                               t :json-false))
          (tm-put :flymake_texts (vconcat (mapcar #'flymake-diagnostic-text (flymake-diagnostics))))
          (tm-put :flymake_types (vconcat (mapcar (lambda (d) (format "%s" (flymake-diagnostic-type d)))
                                                  (flymake-diagnostics))))
          (tinymorph-unwatch feature)
          (tm-put :flymake_cleared (if (tm-wait 30 (lambda () (null (flymake-diagnostics)))) t :json-false)))
        ;; the feature map, opened by `tinymorph-map-open-function'
        (let* ((opened nil)
               (tinymorph-map-open-function (lambda (path) (setq opened path)))
               (path (tinymorph-map)))
          (tm-put :map_path path)
          (tm-put :map_opened opened))
        (let ((doc (tinymorph-command "tinymorph.document" `(:uri ,(eglot--path-to-uri (buffer-file-name))))))
          (tm-put :server_text_matches (if (equal (plist-get doc :text)
                                                  (buffer-substring-no-properties (point-min) (point-max)))
                                           t :json-false)))
        (tm-put :ok t)))
  (error (tm-put :ok :json-false) (tm-put :error (format "%S" err))))

(with-temp-file (plist-get tm-args :result) (insert (json-encode tm-out)))
(kill-emacs 0)
